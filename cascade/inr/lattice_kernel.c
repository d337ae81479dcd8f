/* The LAINR lattice decoder fused into one pass over the queries (cascade/inr/native.py).
 *
 * Computes what cascade.inr.lattice.decode_lattice computes, for the lattice rows
 * [r_begin, r_end) of a band: per query, its input q = [relu(q_y[r] + q_x[c]), 1], the
 * scores against its n x n window (token keys + the row's keys, built once per run of
 * queries that share a window, + the column's keys), the softmax per head, the bands'
 * pre-activations through the folded values, the local pixel path, the ReLU and the summed
 * RGB heads. Every linear map has been folded by the caller (see native.py for the
 * layouts); this file only loops, so that nothing per query goes back to memory.
 *
 * C99 with GCC/Clang vector extensions, no dependencies: built on first use with the system's C compiler and loaded
 * with ctypes; the caller runs several row ranges on several threads.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>


/* Eight floats in a register (GCC and Clang vector extensions); v8u loads and stores them
 * at any alignment. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

static inline v8 load8(const float *p) { return *(const v8u *)p; }
static inline void store8(float *p, v8 v) { *(v8u *)p = v; }
static inline v8 splat8(float x) { return (v8){x, x, x, x, x, x, x, x}; }

typedef int32_t v8i __attribute__((vector_size(32)));

/* exp(x) for x <= 0 (scores minus their maximum), eight at a time: Cephes' expf
 * polynomial, relative error about 1e-7. k = round(x / ln 2) by the 1.5 * 2^23 trick. */
static inline v8 exp8_nonpos(v8 x) {
    const v8 lo = splat8(-87.0f), magic = splat8(12582912.0f);
    const v8i below = x < lo;  /* all ones where x < lo */
    x = (v8)(((v8i)lo & below) | ((v8i)x & ~below));
    const v8 k = (x * splat8(1.44269504088896341f) + magic) - magic;
    const v8 r = x - k * splat8(0.693359375f) + k * splat8(2.12194440e-4f);
    v8 p = splat8(1.9875691500e-4f);
    p = p * r + splat8(1.3981999507e-3f);
    p = p * r + splat8(8.3334519073e-3f);
    p = p * r + splat8(4.1665795894e-2f);
    p = p * r + splat8(1.6666665459e-1f);
    p = p * r + splat8(5.0000001201e-1f);
    p = p * r * r + r + splat8(1.0f);
    const v8i e = (__builtin_convertvector(k, v8i) + 127) << 23;
    return p * (v8)e;
}

/* Y (4, m) (+)= X (4, k) @ W (k, m): four rows of X at a time against one row of W, so
 * that each weight read from the cache serves four multiply-adds, with the accumulators
 * in registers. Rows at strides ldx, ldw, ldy; m a multiple of 8. */
static void gemm4(const float *restrict X, int64_t ldx, int64_t k, const float *restrict W,
                  int64_t ldw, int64_t m, float *restrict Y, int64_t ldy, int accumulate) {
    const float *x0 = X, *x1 = X + ldx, *x2 = X + 2 * ldx, *x3 = X + 3 * ldx;
    float *y0 = Y, *y1 = Y + ldy, *y2 = Y + 2 * ldy, *y3 = Y + 3 * ldy;
    int64_t j = 0;
    for (; j + 16 <= m; j += 16) {
        v8 a0 = splat8(0), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
        if (accumulate) {
            a0 = load8(y0 + j), b0 = load8(y0 + j + 8), a1 = load8(y1 + j), b1 = load8(y1 + j + 8);
            a2 = load8(y2 + j), b2 = load8(y2 + j + 8), a3 = load8(y3 + j), b3 = load8(y3 + j + 8);
        }
        for (int64_t i = 0; i < k; i++) {
            const v8 w = load8(W + i * ldw + j), u = load8(W + i * ldw + j + 8);
            v8 x = splat8(x0[i]);
            a0 += x * w, b0 += x * u;
            x = splat8(x1[i]);
            a1 += x * w, b1 += x * u;
            x = splat8(x2[i]);
            a2 += x * w, b2 += x * u;
            x = splat8(x3[i]);
            a3 += x * w, b3 += x * u;
        }
        store8(y0 + j, a0), store8(y0 + j + 8, b0), store8(y1 + j, a1), store8(y1 + j + 8, b1);
        store8(y2 + j, a2), store8(y2 + j + 8, b2), store8(y3 + j, a3), store8(y3 + j + 8, b3);
    }
    for (; j < m; j += 8) {
        v8 a0 = splat8(0), a1 = a0, a2 = a0, a3 = a0;
        if (accumulate)
            a0 = load8(y0 + j), a1 = load8(y1 + j), a2 = load8(y2 + j), a3 = load8(y3 + j);
        for (int64_t i = 0; i < k; i++) {
            const v8 w = load8(W + i * ldw + j);
            a0 += splat8(x0[i]) * w, a1 += splat8(x1[i]) * w;
            a2 += splat8(x2[i]) * w, a3 += splat8(x3[i]) * w;
        }
        store8(y0 + j, a0), store8(y1 + j, a1), store8(y2 + j, a2), store8(y3 + j, a3);
    }
}

#define T 4      /* a tile is T x T queries: T lattice rows x T lattice columns */
#define TQ (T * T)

static inline int64_t pad8(int64_t v) { return (v + 7) / 8 * 8; }

/* The first index j >= i with key[j] != key[i], at most i + T. */
static inline int64_t run_end(const int64_t *key, int64_t i, int64_t end) {
    int64_t j = i + 1;
    while (j < end && j < i + T && key[j] == key[i]) j++;
    return j;
}

/* Floats of scratch one call of lainr_decode_rows needs. */
int64_t lainr_work_floats(int64_t hid, int64_t heads, int64_t n, int64_t n_bands) {
    const int64_t K = n * n, HK = heads * K, HN = heads * n, D1 = hid + 1, P = n_bands * hid;
    return D1 * pad8(HK) + HK * P + TQ * (D1 + pad8(HK) + 4 * pad8(HN) + P + 2 * hid + 8);
}

/* Returns 0, or 1 if a width is not a multiple of 8 (the caller checks first). HNp is
 * heads * n rounded up to a multiple of 8. */
int lainr_decode_rows(
    int64_t r_begin, int64_t r_end, int64_t W,
    int64_t hid, int64_t heads, int64_t n, int64_t n_bands,
    const float *restrict qy,    /* (R, hid) row terms of the query input */
    const float *restrict qx,    /* (W, hid) column terms (with the bias and the cell) */
    const float *restrict ky,    /* (R, hid+1, HNp) row keys, (head, token row), padded */
    const float *restrict kx,    /* (W, hid+1, HNp) column keys, (head, token column) */
    const float *restrict vy,    /* (R, heads*n, P) row values (with the row band terms) */
    const float *restrict vx,    /* (W, heads*n, P) column values (with the column terms) */
    const float *restrict kt,    /* (gh, gw, hid+1, heads) token keys */
    const float *restrict vt,    /* (gh, gw, heads, P) token values */
    int64_t gw,
    const int64_t *restrict iy,  /* (R,) first token row of each row's window */
    const int64_t *restrict ix,  /* (W,) first token column of each column's window */
    const float *restrict lp,    /* (nr, lp_w, hid) local path per LR pixel, or NULL */
    int64_t lp_w,
    int64_t lp_row0,             /* the LR row of lp's first row */
    const int64_t *restrict py,  /* (R,) the LR pixel row of each lattice row */
    const int64_t *restrict px,  /* (W,) the LR pixel column of each lattice column */
    const float *restrict oy,    /* (R, hid) the local path's row offset terms */
    const float *restrict ox,    /* (W, hid) ... and column offset terms */
    const float *restrict wp,    /* (hid, hid) the local path's projection, (in, out) */
    const float *restrict wrgb,  /* (P, 8) the summed RGB heads, zeros after column 3 */
    const float *restrict brgb,  /* (3,) */
    float *restrict work,        /* lainr_work_floats(...) floats of scratch */
    float *restrict out)         /* (R, W, 3) */
{
    const int64_t K = n * n, HK = heads * K, HN = heads * n, D1 = hid + 1;
    const int64_t P = n_bands * hid;
    if (hid % 8) return 1;
    /* widths padded to whole vectors; the pad columns hold zeros or are never read */
    const int64_t HKp = pad8(HK), HNp = pad8(HN);
    float *restrict Kw = work;              /* the window's token keys, (D1, HKp) */
    float *restrict Vw = Kw + D1 * HKp;     /* the window's token values, (HK, P) */
    float *restrict Q = Vw + HK * P;        /* the tile's query inputs, (TQ, D1) */
    float *restrict S = Q + TQ * D1;        /* scores, then weights, (TQ, HKp) */
    float *restrict SY = S + TQ * HKp;      /* row and column scores, (TQ, HNp) */
    float *restrict SX = SY + TQ * HNp;
    float *restrict AY = SX + TQ * HNp;     /* the weights' marginals, (TQ, HNp) */
    float *restrict AX = AY + TQ * HNp;
    float *restrict PRE = AX + TQ * HNp;    /* the bands' pre-activations, (TQ, P) */
    float *restrict L = PRE + TQ * P;       /* the local path, (TQ, hid) twice */
    float *restrict TL = L + TQ * hid;
    float *restrict RGB = TL + TQ * hid;    /* (TQ, 8) */
    int64_t rows[T], cols[T];
    memset(Kw, 0, sizeof(float) * D1 * HKp);

    int64_t win_y = -1, win_x = -1;
    for (int64_t r0 = r_begin; r0 < r_end;) {
        const int64_t r1 = run_end(iy, r0, r_end), nr = r1 - r0;
        for (int64_t t = 0; t < T; t++) rows[t] = r0 + (t < nr ? t : nr - 1);
        for (int64_t c0 = 0; c0 < W;) {
            const int64_t c1 = run_end(ix, c0, W), nc = c1 - c0;
            for (int64_t t = 0; t < T; t++) cols[t] = c0 + (t < nc ? t : nc - 1);
            /* 1. the window's token keys and values, when the window changes */
            if (iy[r0] != win_y || ix[c0] != win_x) {
                win_y = iy[r0];
                win_x = ix[c0];
                for (int64_t a = 0; a < n; a++)
                    for (int64_t b = 0; b < n; b++) {
                        const int64_t tok = (win_y + a) * gw + (win_x + b);
                        const float *ktok = kt + tok * D1 * heads, *vtok = vt + tok * heads * P;
                        for (int64_t h = 0; h < heads; h++) {
                            const int64_t o = h * K + a * n + b;
                            for (int64_t i = 0; i < D1; i++) Kw[i * HKp + o] = ktok[i * heads + h];
                            memcpy(Vw + o * P, vtok + h * P, sizeof(float) * P);
                        }
                    }
            }
            /* 2. the queries' inputs, with a 1 for the folded biases: Q (TQ, D1), tile
             *    position t = row * T + column */
            for (int64_t y = 0; y < T; y++)
                for (int64_t x = 0; x < T; x++) {
                    const float *a = qy + rows[y] * hid, *b = qx + cols[x] * hid;
                    float *q = Q + (y * T + x) * D1;
                    for (int64_t i = 0; i < hid; i++) {
                        const float v = a[i] + b[i];
                        q[i] = v > 0.0f ? v : 0.0f;
                    }
                    q[hid] = 1.0f;
                }
            /* 3. scores: the window's tokens; each row's keys over that row's queries and
             *    each column's over that column's (repeated over token columns / rows) */
            for (int64_t g = 0; g < T; g++)
                gemm4(Q + g * T * D1, D1, D1, Kw, HKp, HKp, S + g * T * HKp, HKp, 0);
            for (int64_t y = 0; y < T; y++)
                gemm4(Q + y * T * D1, D1, D1, ky + rows[y] * D1 * HNp, HNp, HNp,
                      SY + y * T * HNp, HNp, 0);
            for (int64_t x = 0; x < T; x++)
                gemm4(Q + x * D1, T * D1, D1, kx + cols[x] * D1 * HNp, HNp, HNp,
                      SX + x * HNp, T * HNp, 0);
            /* 4. softmax per query and head: the row and column terms added, each head's
             *    maximum subtracted, then one vectorized pass of exp over the tile */
            for (int64_t t = 0; t < TQ; t++) {
                float *s = S + t * HKp;
                const float *sy = SY + t * HNp, *sx = SX + t * HNp;
                for (int64_t h = 0; h < heads; h++) {
                    float *sh = s + h * K, m = -INFINITY;
                    for (int64_t a = 0; a < n; a++)
                        for (int64_t b = 0; b < n; b++) {
                            const float v = sh[a * n + b] + sy[h * n + a] + sx[h * n + b];
                            sh[a * n + b] = v;
                            m = v > m ? v : m;
                        }
                    for (int64_t j = 0; j < K; j++) sh[j] -= m;
                }
                for (int64_t j = HK; j < HKp; j++) s[j] = 0.0f;  /* the padding */
            }
            for (int64_t j = 0; j < TQ * HKp; j += 8) store8(S + j, exp8_nonpos(load8(S + j)));
            /* ... normalized; the weights' marginals over token columns (AY, for the row
             *    values) and over token rows (AX, for the column values) */
            for (int64_t t = 0; t < TQ; t++)
                for (int64_t h = 0; h < heads; h++) {
                    float *sh = S + t * HKp + h * K, z = 0.0f;
                    for (int64_t j = 0; j < K; j++) z += sh[j];
                    const float inv = 1.0f / z;
                    for (int64_t j = 0; j < K; j++) sh[j] *= inv;
                    for (int64_t a = 0; a < n; a++) {
                        float acc = 0.0f;
                        for (int64_t b = 0; b < n; b++) acc += sh[a * n + b];
                        AY[t * HNp + h * n + a] = acc;
                    }
                    for (int64_t b = 0; b < n; b++) {
                        float acc = 0.0f;
                        for (int64_t a = 0; a < n; a++) acc += sh[a * n + b];
                        AX[t * HNp + h * n + b] = acc;
                    }
                }
            /* 5. the bands' pre-activations: the window's values, each row's values through
             *    its queries' AY, each column's through AX */
            for (int64_t g = 0; g < T; g++)
                gemm4(S + g * T * HKp, HKp, HK, Vw, P, P, PRE + g * T * P, P, 0);
            for (int64_t y = 0; y < T; y++)
                gemm4(AY + y * T * HNp, HNp, HN, vy + rows[y] * HN * P, P, P,
                      PRE + y * T * P, P, 1);
            for (int64_t x = 0; x < T; x++)
                gemm4(AX + x * HNp, T * HNp, HN, vx + cols[x] * HN * P, P, P,
                      PRE + x * P, T * P, 1);
            /* 6. the local pixel path, the same projection added to every band */
            if (lp) {
                for (int64_t y = 0; y < T; y++)
                    for (int64_t x = 0; x < T; x++) {
                        const int64_t t = y * T + x;
                        const float *lpp = lp + ((py[rows[y]] - lp_row0) * lp_w + px[cols[x]]) * hid;
                        const float *oy_r = oy + rows[y] * hid, *ox_c = ox + cols[x] * hid;
                        for (int64_t i = 0; i < hid; i++) {
                            const float v = lpp[i] + oy_r[i] + ox_c[i];
                            L[t * hid + i] = v > 0.0f ? v : 0.0f;
                        }
                    }
                for (int64_t g = 0; g < T; g++)
                    gemm4(L + g * T * hid, hid, hid, wp, hid, hid, TL + g * T * hid, hid, 0);
                for (int64_t t = 0; t < TQ; t++)
                    for (int64_t b = 0; b < n_bands; b++)
                        for (int64_t i = 0; i < hid; i++) PRE[t * P + b * hid + i] += TL[t * hid + i];
            }
            /* 7. ReLU and the summed RGB heads (wrgb: (P, 8), three columns used) */
            for (int64_t j = 0; j < TQ * P; j++) PRE[j] = PRE[j] > 0.0f ? PRE[j] : 0.0f;
            for (int64_t g = 0; g < T; g++)
                gemm4(PRE + g * T * P, P, P, wrgb, 8, 8, RGB + g * T * 8, 8, 0);
            for (int64_t y = 0; y < nr; y++)
                for (int64_t x = 0; x < nc; x++) {
                    float *o = out + (rows[y] * W + cols[x]) * 3;
                    const float *v = RGB + (y * T + x) * 8;
                    o[0] = v[0] + brgb[0], o[1] = v[1] + brgb[1], o[2] = v[2] + brgb[2];
                }
            c0 = c1;
        }
        r0 = r1;
    }
    return 0;
}
