/* The selective scan on the CPU, forward and backward: the compiled kernel behind `selective_scan_cpu`
 * (vl_mamba/ops/scan_cpu.py builds this file with the machine's C compiler on first use).
 *
 * For every channel d and state index n:
 *     h_t = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * u_t * B_t[n]
 *     y_t = (sum_n C_t[n] * h_t + D[d] * u_t) * silu(z_t)
 *
 * One call works on the channels [d0, d1) of every sequence, so that callers can run disjoint blocks of channels on
 * several threads. Inside, VL_LANES neighbouring channels advance together, one vector lane each: their states
 * (N x VL_LANES) stay in the first-level cache, and the exponentials are vector calls. The sequence is cut into
 * chunks of `chunk` steps; each chunk's operands are first gathered into small time-major buffers (any strides in,
 * so transposed views cost no copy), and its outputs are scattered back. The forward keeps the state before every
 * chunk; the backward walks the chunks in reverse, recomputes each chunk's decays and states from that state, and
 * runs the adjoint recurrence G_t = C_t g_t + decay_{t+1} G_{t+1} through them. Decays are single-step
 * exponentials, at most 1 for a stable A, only ever multiplied: nothing overflows, whatever dt * |A|.
 *
 * The file is compiled twice over by including itself (by name: keep it cpu_scan.c), once for float and once for
 * double.
 */
#ifndef VL_REAL

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VL_LANES 16

#ifdef VL_VECTOR_MATH
/* glibc's libmvec holds vector versions of exp; declaring them lets the compiler vectorise the loops that call it. */
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) double exp(double);
#endif

typedef struct {
    int64_t batch, dim, length, n, groups, chunk, d0, d1;
    /* inputs: u, dt (softplus and bias already applied), z: (batch, dim, L); A: (dim, N) contiguous;
       B, C: (batch, G, N, L); D: (dim,) contiguous; strides in elements; D, z may be NULL */
    const void *u, *dt, *A, *B, *C, *D, *z;
    int64_t su[3], sdt[3], sB[4], sC[4], sz[3];
    /* forward outputs, contiguous: out (batch, dim, L), last (batch, dim, N), starts (chunks, batch, dim, N),
       the state before every chunk (NULL when no backward follows) */
    void *out, *last, *starts;
    /* backward: g, the gradient of out, (batch, dim, L) with strides sg; glast (batch, dim, N) contiguous or NULL */
    const void *g, *glast;
    int64_t sg[3];
    /* gradients, contiguous: gu, gdt, gz (batch, dim, L); gA (dim, N) and gD (dim,), added to; gB, gC
       (batch, G, N, L), added to (each caller's own when blocks of channels share B and C) */
    void *gu, *gdt, *gz, *gA, *gD, *gB, *gC;
} vl_scan_args;

int vl_scan_lanes(void) { return VL_LANES; }

#define VL_REAL float
#define VL_EXP expf
#define VL_NAME(x) x##_f32
#include "cpu_scan.c"
#undef VL_REAL
#undef VL_EXP
#undef VL_NAME

#define VL_REAL double
#define VL_EXP exp
#define VL_NAME(x) x##_f64
#include "cpu_scan.c"
#undef VL_REAL
#undef VL_EXP
#undef VL_NAME

#else /* the body, once per VL_REAL */

typedef VL_REAL VL_NAME(real);
#define R VL_NAME(real)

/* Scratch for one call: per chunk, time-major (chunk, VL_LANES) rows of the channel-wise operands and (chunk, N)
   rows of B and C; in the backward also the chunk's decays and states, (chunk, N, VL_LANES). */
typedef struct {
    R *dt, *u, *z, *y, *g, *gu, *gdt, *gz, *B, *C;
    R *h, *h0, *Ab, *G, *gAl, *gDl, *Dl, *decay, *states;
} VL_NAME(work);

static void *VL_NAME(work_alloc)(VL_NAME(work) *w, int64_t chunk, int64_t n, int backward) {
    const int64_t row = chunk * VL_LANES, state = n * VL_LANES, big = backward ? chunk * state : 0;
    const int64_t total = 8 * row + 2 * chunk * n + 5 * state + 2 * VL_LANES + 2 * big;
    R *p = (R *)calloc((size_t)total, sizeof(R));
    if (!p) return NULL;
    R *q = p;
    w->dt = q; q += row; w->u = q; q += row; w->z = q; q += row; w->y = q; q += row; w->g = q; q += row;
    w->gu = q; q += row; w->gdt = q; q += row; w->gz = q; q += row;
    w->B = q; q += chunk * n; w->C = q; q += chunk * n;
    w->h = q; q += state; w->h0 = q; q += state; w->Ab = q; q += state; w->G = q; q += state;
    w->gAl = q; q += state; w->gDl = q; q += VL_LANES; w->Dl = q; q += VL_LANES;
    w->decay = q; q += big; w->states = q;
    return p;
}

/* Rows t0 .. t0+m-1 of channels c0 .. c0+w-1 of sequence b of a (batch, dim, L) tensor -> dst (m, VL_LANES). */
static inline void VL_NAME(gather)(R *dst, const R *src, const int64_t *s, int64_t b, int64_t c0, int64_t w,
                                   int64_t t0, int64_t m) {
    for (int64_t c = 0; c < w; c++) {
        const R *p = src + b * s[0] + (c0 + c) * s[1] + t0 * s[2];
        for (int64_t j = 0; j < m; j++) dst[j * VL_LANES + c] = p[j * s[2]];
    }
}

/* The inverse of gather, into a contiguous (batch, dim, L) tensor. */
static inline void VL_NAME(scatter)(R *dst, const R *src, int64_t dim, int64_t length, int64_t b, int64_t c0,
                                    int64_t w, int64_t t0, int64_t m) {
    for (int64_t c = 0; c < w; c++) {
        R *p = dst + (b * dim + c0 + c) * length + t0;
        for (int64_t j = 0; j < m; j++) p[j] = src[j * VL_LANES + c];
    }
}

/* Rows t0 .. t0+m-1 of B or C of sequence b and group g -> dst (m, N). */
static inline void VL_NAME(gather_bc)(R *dst, const R *src, const int64_t *s, int64_t n, int64_t b, int64_t g,
                                      int64_t t0, int64_t m) {
    for (int64_t k = 0; k < n; k++) {
        const R *p = src + b * s[0] + g * s[1] + k * s[2] + t0 * s[3];
        for (int64_t j = 0; j < m; j++) dst[j * n + k] = p[j * s[3]];
    }
}

/* m steps of w channels from the states h: outputs y (before D and the gate) and, when `decay` is not NULL, every
   step's decays and states (m, N, VL_LANES). Always inlined, so that the w = VL_LANES calls get fixed-width loops. */
static inline __attribute__((always_inline)) void VL_NAME(steps)(
    VL_NAME(work) *wk, int64_t n, int64_t m, const int64_t w, R *decay, R *states) {
    R *restrict h = wk->h;
    const R *restrict Ab = wk->Ab;
    for (int64_t j = 0; j < m; j++) {
        const R *restrict dt = wk->dt + j * VL_LANES, *restrict u = wk->u + j * VL_LANES;
        const R *restrict Bj = wk->B + j * n, *restrict Cj = wk->C + j * n;
        R x[VL_LANES], y[VL_LANES];
#pragma omp simd
        for (int64_t c = 0; c < w; c++) {
            x[c] = dt[c] * u[c];
            y[c] = 0;
        }
        for (int64_t k = 0; k < n; k++) {
            const R bk = Bj[k], ck = Cj[k];
            R *restrict hk = h + k * VL_LANES;
            const R *restrict ak = Ab + k * VL_LANES;
            if (decay) {
                R *restrict dk = decay + (j * n + k) * VL_LANES, *restrict sk = states + (j * n + k) * VL_LANES;
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    const R a = VL_EXP(dt[c] * ak[c]);
                    hk[c] = a * hk[c] + x[c] * bk;
                    y[c] += hk[c] * ck;
                    dk[c] = a;
                    sk[c] = hk[c];
                }
            } else {
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    const R a = VL_EXP(dt[c] * ak[c]);
                    hk[c] = a * hk[c] + x[c] * bk;
                    y[c] += hk[c] * ck;
                }
            }
        }
        R *restrict yj = wk->y + j * VL_LANES;
#pragma omp simd
        for (int64_t c = 0; c < w; c++) yj[c] = y[c];
    }
}

/* The adjoint of m steps of w channels, last step first. On entry wk->G holds decay_{t1} G_{t1} from the chunk after
   this one (or the last state's gradient), wk->gz the gradient of y (before D) and wk->h0 the state before the chunk;
   on return G holds what the chunk before needs. Accumulates into gAl, and B's and C's gradients. */
static inline __attribute__((always_inline)) void VL_NAME(adjoint)(
    VL_NAME(work) *wk, int64_t n, int64_t m, const int64_t w, R *restrict gB, R *restrict gC, int64_t sbc) {
    const R *restrict Ab = wk->Ab, *restrict decay = wk->decay, *restrict states = wk->states;
    R *restrict G = wk->G, *restrict gAl = wk->gAl;
    for (int64_t j = m - 1; j >= 0; j--) {
        const R *restrict dt = wk->dt + j * VL_LANES, *restrict u = wk->u + j * VL_LANES;
        const R *restrict gy = wk->gz + j * VL_LANES;
        const R *restrict Bj = wk->B + j * n, *restrict Cj = wk->C + j * n;
        R x[VL_LANES], gx[VL_LANES], gda[VL_LANES];
#pragma omp simd
        for (int64_t c = 0; c < w; c++) {
            x[c] = dt[c] * u[c];
            gx[c] = 0;
            gda[c] = 0;
        }
        for (int64_t k = 0; k < n; k++) {
            const R bk = Bj[k], ck = Cj[k];
            R *restrict Gk = G + k * VL_LANES, *restrict gak = gAl + k * VL_LANES;
            const R *restrict ak = Ab + k * VL_LANES;
            const R *restrict dk = decay + (j * n + k) * VL_LANES, *restrict hk = states + (j * n + k) * VL_LANES;
            const R *restrict hp = j ? states + ((j - 1) * n + k) * VL_LANES : wk->h0 + k * VL_LANES;
            R sc = 0, sb = 0;
#pragma omp simd reduction(+ : sc, sb)
            for (int64_t c = 0; c < w; c++) {
                const R Gc = Gk[c] + ck * gy[c];  /* the adjoint of h_t */
                sc += gy[c] * hk[c];
                sb += Gc * x[c];
                gx[c] += Gc * bk;
                const R gd = Gc * hp[c] * dk[c];  /* the adjoint of dt * A */
                gak[c] += gd * dt[c];
                gda[c] += gd * ak[c];
                Gk[c] = dk[c] * Gc;
            }
            gC[k * sbc + j] += sc;
            gB[k * sbc + j] += sb;
        }
        R *restrict gu = wk->gu + j * VL_LANES, *restrict gdt = wk->gdt + j * VL_LANES;
#pragma omp simd
        for (int64_t c = 0; c < w; c++) {
            gu[c] = gx[c] * dt[c];
            gdt[c] = gx[c] * u[c] + gda[c];
        }
    }
}

/* The per-channel constants of lanes c0 .. c0+w-1: A (N, VL_LANES) and D (zero without D, and in unused lanes). */
static void VL_NAME(lanes)(VL_NAME(work) *wk, const vl_scan_args *a, int64_t c0, int64_t w) {
    const R *A = (const R *)a->A, *D = (const R *)a->D;
    memset(wk->Ab, 0, sizeof(R) * a->n * VL_LANES);
    memset(wk->Dl, 0, sizeof(R) * VL_LANES);
    for (int64_t c = 0; c < w; c++) {
        for (int64_t k = 0; k < a->n; k++) wk->Ab[k * VL_LANES + c] = A[(c0 + c) * a->n + k];
        if (D) wk->Dl[c] = D[c0 + c];
    }
}

/* Copies between a (batch, dim, N) tensor's channels [c0, c0 + w) of sequence b and lane-major state rows. */
static void VL_NAME(state_out)(R *dst, const R *h, const vl_scan_args *a, int64_t b, int64_t c0, int64_t w) {
    for (int64_t c = 0; c < w; c++)
        for (int64_t k = 0; k < a->n; k++) dst[(b * a->dim + c0 + c) * a->n + k] = h[k * VL_LANES + c];
}

static void VL_NAME(state_in)(R *h, const R *src, const vl_scan_args *a, int64_t b, int64_t c0, int64_t w) {
    memset(h, 0, sizeof(R) * a->n * VL_LANES);
    if (!src) return;
    for (int64_t c = 0; c < w; c++)
        for (int64_t k = 0; k < a->n; k++) h[k * VL_LANES + c] = src[(b * a->dim + c0 + c) * a->n + k];
}

/* The next block of lanes from c0: at most VL_LANES channels, within one group and within [c0, d1). */
static inline int64_t VL_NAME(width)(const vl_scan_args *a, int64_t c0) {
    const int64_t per_group = a->dim / a->groups, group_end = (c0 / per_group + 1) * per_group;
    int64_t w = a->d1 - c0;
    if (w > VL_LANES) w = VL_LANES;
    if (w > group_end - c0) w = group_end - c0;
    return w;
}

int VL_NAME(vl_scan_forward)(const vl_scan_args *a) {
    VL_NAME(work) wk;
    const int64_t n = a->n, L = a->length, T = a->chunk, per_group = a->dim / a->groups;
    void *mem = VL_NAME(work_alloc)(&wk, T, n, 0);
    if (!mem) return 1;
    R *out = (R *)a->out, *starts = (R *)a->starts;
    const int64_t state_stride = a->batch * a->dim * n;  /* between the chunks of `starts` */
    for (int64_t b = 0; b < a->batch; b++) {
        for (int64_t c0 = a->d0; c0 < a->d1;) {
            const int64_t w = VL_NAME(width)(a, c0), g = c0 / per_group;
            VL_NAME(lanes)(&wk, a, c0, w);
            VL_NAME(state_in)(wk.h, NULL, a, b, c0, w);
            for (int64_t t0 = 0, k = 0; t0 < L; t0 += T, k++) {
                const int64_t m = L - t0 < T ? L - t0 : T;
                if (starts) VL_NAME(state_out)(starts + k * state_stride, wk.h, a, b, c0, w);
                VL_NAME(gather)(wk.dt, (const R *)a->dt, a->sdt, b, c0, w, t0, m);
                VL_NAME(gather)(wk.u, (const R *)a->u, a->su, b, c0, w, t0, m);
                VL_NAME(gather_bc)(wk.B, (const R *)a->B, a->sB, n, b, g, t0, m);
                VL_NAME(gather_bc)(wk.C, (const R *)a->C, a->sC, n, b, g, t0, m);
                if (w == VL_LANES) VL_NAME(steps)(&wk, n, m, VL_LANES, NULL, NULL);
                else VL_NAME(steps)(&wk, n, m, w, NULL, NULL);
                for (int64_t j = 0; j < m; j++) {
                    const int64_t r = j * VL_LANES;
#pragma omp simd
                    for (int64_t c = 0; c < VL_LANES; c++) wk.y[r + c] += wk.Dl[c] * wk.u[r + c];
                }
                if (a->z) {
                    VL_NAME(gather)(wk.z, (const R *)a->z, a->sz, b, c0, w, t0, m);
#pragma omp simd
                    for (int64_t i = 0; i < m * VL_LANES; i++) wk.y[i] *= wk.z[i] / ((R)1 + VL_EXP(-wk.z[i]));
                }
                VL_NAME(scatter)(out, wk.y, a->dim, L, b, c0, w, t0, m);
            }
            VL_NAME(state_out)((R *)a->last, wk.h, a, b, c0, w);
            c0 += w;
        }
    }
    free(mem);
    return 0;
}

int VL_NAME(vl_scan_backward)(const vl_scan_args *a) {
    VL_NAME(work) wk;
    const int64_t n = a->n, L = a->length, T = a->chunk, per_group = a->dim / a->groups;
    void *mem = VL_NAME(work_alloc)(&wk, T, n, 1);
    if (!mem) return 1;
    const R *starts = (const R *)a->starts;
    R *gA = (R *)a->gA, *gD = (R *)a->gD;
    const int64_t state_stride = a->batch * a->dim * n, chunks = L ? (L + T - 1) / T : 0;
    for (int64_t b = 0; b < a->batch; b++) {
        for (int64_t c0 = a->d0; c0 < a->d1;) {
            const int64_t w = VL_NAME(width)(a, c0), g = c0 / per_group;
            R *gB = (R *)a->gB + ((b * a->groups + g) * n) * L, *gC = (R *)a->gC + ((b * a->groups + g) * n) * L;
            VL_NAME(lanes)(&wk, a, c0, w);
            VL_NAME(state_in)(wk.G, (const R *)a->glast, a, b, c0, w);
            memset(wk.gAl, 0, sizeof(R) * n * VL_LANES);
            memset(wk.gDl, 0, sizeof(R) * VL_LANES);
            for (int64_t k = chunks - 1; k >= 0; k--) {
                const int64_t t0 = k * T, m = L - t0 < T ? L - t0 : T;
                VL_NAME(gather)(wk.dt, (const R *)a->dt, a->sdt, b, c0, w, t0, m);
                VL_NAME(gather)(wk.u, (const R *)a->u, a->su, b, c0, w, t0, m);
                VL_NAME(gather)(wk.g, (const R *)a->g, a->sg, b, c0, w, t0, m);
                VL_NAME(gather_bc)(wk.B, (const R *)a->B, a->sB, n, b, g, t0, m);
                VL_NAME(gather_bc)(wk.C, (const R *)a->C, a->sC, n, b, g, t0, m);
                VL_NAME(state_in)(wk.h0, starts + k * state_stride, a, b, c0, w);
                memcpy(wk.h, wk.h0, sizeof(R) * n * VL_LANES);
                if (w == VL_LANES) VL_NAME(steps)(&wk, n, m, VL_LANES, wk.decay, wk.states);
                else VL_NAME(steps)(&wk, n, m, w, wk.decay, wk.states);
                /* The gradient of y before the gate and D (in wk.gz's rows until the adjoint has read it), and the
                   gradients of z (into y's rows, free once read) and D. Whole rows of lanes, so that the loops
                   vectorise; lanes beyond w are never scattered. */
                R *restrict gy = wk.gz, *restrict gzo = wk.y;
                const R *restrict Dl = wk.Dl;
                if (a->z) {
                    VL_NAME(gather)(wk.z, (const R *)a->z, a->sz, b, c0, w, t0, m);
                    for (int64_t j = 0; j < m; j++) {
                        const int64_t r = j * VL_LANES;
#pragma omp simd
                        for (int64_t c = 0; c < VL_LANES; c++) {
                            const R z = wk.z[r + c], s = (R)1 / ((R)1 + VL_EXP(-z)), g = wk.g[r + c];
                            gzo[r + c] = g * (wk.y[r + c] + Dl[c] * wk.u[r + c]) * s * (1 + z * (1 - s));
                            gy[r + c] = g * z * s;
                        }
                    }
                } else {
                    memcpy(gy, wk.g, sizeof(R) * m * VL_LANES);
                }
                for (int64_t j = 0; j < m; j++) {
                    const int64_t r = j * VL_LANES;
#pragma omp simd
                    for (int64_t c = 0; c < VL_LANES; c++) wk.gDl[c] += gy[r + c] * wk.u[r + c];
                }
                if (w == VL_LANES) VL_NAME(adjoint)(&wk, n, m, VL_LANES, gB + t0, gC + t0, L);
                else VL_NAME(adjoint)(&wk, n, m, w, gB + t0, gC + t0, L);
                for (int64_t j = 0; j < m; j++) {
                    const int64_t r = j * VL_LANES;
#pragma omp simd
                    for (int64_t c = 0; c < VL_LANES; c++) wk.gu[r + c] += gy[r + c] * Dl[c];
                }
                VL_NAME(scatter)((R *)a->gu, wk.gu, a->dim, L, b, c0, w, t0, m);
                VL_NAME(scatter)((R *)a->gdt, wk.gdt, a->dim, L, b, c0, w, t0, m);
                if (a->z) VL_NAME(scatter)((R *)a->gz, gzo, a->dim, L, b, c0, w, t0, m);
            }
            for (int64_t c = 0; c < w; c++) {
                for (int64_t k = 0; k < n; k++) gA[(c0 + c) * n + k] += wk.gAl[k * VL_LANES + c];
                if (gD) gD[c0 + c] += wk.gDl[c];
            }
            c0 += w;
        }
    }
    free(mem);
    return 0;
}

#undef R
#endif
