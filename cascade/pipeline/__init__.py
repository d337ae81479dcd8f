"""The cascade: from an input image and a scale (or size) to N samples and their spread.

``CascadePipeline`` (``core``) runs a plan (``plan``: which stage at which size) over the
stages (``stages``: LAINR or bicubic, then the x2 diffusion stages) with the settings of
``config``; ``folder`` reads and writes pipeline folders, ``calibration`` their
``calibration.json``. docs/architecture.md walks through one upscale.
"""

from cascade.inr.lattice import lainr_resample, lattice_coords
from cascade.pipeline.calibration import (
    CALIBRATION_FORMAT,
    load_calibration,
    match_calibration,
    save_calibration,
    write_calibration,
)
from cascade.pipeline.config import (
    KNOBS,
    OUTPUTS,
    SAMPLERS,
    STAGE_CHOICES,
    PipelineConfig,
    StageSpec,
    check_settings,
    config_from,
    merge_settings,
    rows_per_batch,
    settings_dict,
    stage_knobs,
    stages_needed,
)
from cascade.pipeline.core import CascadePipeline
from cascade.pipeline.folder import DIFFUSION_FOLDERS, FORMAT, LAINR_FOLDER
from cascade.pipeline.output import CascadeOutput
from cascade.pipeline.plan import (
    Plan,
    PlanStep,
    check_scale,
    lattice_size,
    make_plan,
    parse_size,
    target_size,
)
from cascade.pipeline.stages import DiffusionStage

__all__ = [
    "CALIBRATION_FORMAT", "DIFFUSION_FOLDERS", "FORMAT", "KNOBS", "LAINR_FOLDER", "OUTPUTS",
    "SAMPLERS", "STAGE_CHOICES", "CascadeOutput", "CascadePipeline", "DiffusionStage",
    "PipelineConfig", "Plan", "PlanStep", "StageSpec", "check_scale", "check_settings",
    "config_from", "lainr_resample", "lattice_coords", "lattice_size", "load_calibration",
    "make_plan", "match_calibration", "merge_settings", "parse_size", "rows_per_batch",
    "save_calibration", "settings_dict", "stage_knobs", "stages_needed", "target_size",
    "write_calibration",
]
