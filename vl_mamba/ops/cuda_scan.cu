// The selective scan of Mamba-1 on CUDA: forward and backward, for inputs in float32, bfloat16 or float16.
//
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,   y_t = <C_t, h_t> + D * u_t,   out_t = y_t * silu(z_t)
//
// with delta_t = softplus(delta_raw_t + delta_bias) when asked. Four consecutive threads (a quad) hold the 16
// states of one channel (d) of one sequence (b), four states each: thread q of the quad holds states q, q + 4,
// q + 8 and q + 12 (states past N stay zero), and walks the sequence in groups of STEPS = 4 time steps. A thread's
// four states are independent chains, so it sums them itself; the quad then sums its four threads with a
// reduce-scatter of two shuffles that leaves thread q with step q of the group: three shuffles serve a group's
// four sums. A block of CHANNELS channels stages TILE steps of their operands in shared memory (delta's bias and
// softplus and the gate's factors done once per element) and reads them as float4 vectors; the next tile's loads
// are issued into registers before the current tile is scanned, so that they arrive meanwhile.
//
// B and C may come in groups (the K directions of a 2D scan), each serving an equal run of channels: a block's
// channels then lie in one group, whose rows it reads.
//
// The gradients of B and C sum over channels: within a warp's 8 channels by a reduce-scatter of shuffles, across
// the block's warps in shared memory once per tile, across blocks by `sum_partials` (from a float32 buffer of one
// partial sum per block).
//
// The forward keeps the state at the start of every TILE steps (float32, (batch, dim, chunks, 16), thread q's four
// states at [4q, 4q + 4)). The backward walks the chunks from the last: it replays a chunk from its saved state,
// keeping the state at the start of each group in shared memory, then goes back through the groups, replaying each
// to have its states in registers, and runs the adjoint recurrence g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}.
//
// Built by cuda_build.py with nvcc (-O3 --use_fast_math) for the card at hand; driven through ctypes by
// scan_cuda.py, which passes the torch stream. Time steps must be the unit-stride axis of every sequence tensor.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define MAX_STATES 16
#define SPT 4                          // states per thread
#define QUAD (MAX_STATES / SPT)        // threads per channel
#define CHANNELS 32                    // channels per block
#define THREADS (QUAD * CHANNELS)      // 128
#define WARPS (THREADS / 32)
#define STEPS 4                        // time steps per group: one per thread of a quad after its sums
#define TILE 32                        // time steps per tile staged in shared memory, and per saved state
#define GROUPS (TILE / STEPS)
#define ROW (TILE + 4)                 // a tile row's floats (the padding spreads rows over the banks)
#define FULL 0xffffffffu
#define LOG2E 1.4426950408889634f

extern "C" {

// Every pointer may be null where the argument is absent (D, z, delta_bias, last, ckpt, dlast, out_z).
typedef struct {
    int64_t batch, dim, length, nstate;
    int64_t nchunks;                    // ceil(length / TILE)
    int32_t softplus, in_dtype, w_dtype;   // dtypes: 0 float32, 1 bfloat16, 2 float16
    int32_t vec;                        // rows aligned for vector loads (8 steps; 4 for B and C)
    const void *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
    int64_t su[2], sdelta[2], sB[2], sC[2], sz[2];   // (batch, channel) strides; (batch, state) for B and C
    void *out, *last, *ckpt;            // out (batch, dim, length), strides sout; last (batch, dim, nstate)
    const void *dout, *dlast;           // dout (batch, dim, length), strides sdout; dlast (batch, dim, nstate) float32
    void *du, *ddelta, *dz;             // in_dtype, (batch, dim, length): strides sdu, sddelta and sdz
    float *dA, *dD, *dbias;             // float32, zeroed by the caller (atomic sums)
    float *dBC;                         // (batch, blocks, 2, MAX_STATES, length) float32: partial sums per block
    int64_t sout[2], sdout[2], sdz[2];  // (batch, channel) strides of out and out_z, dout, dz
    void *out_z;                        // backward: the forward's output again (gated), laid out as out; or null
    int64_t sdu[2], sddelta[2];         // (batch, channel) strides of du and ddelta
    int64_t group_dim;                  // channels per group of B and C, a multiple of CHANNELS unless one group
    int32_t a_log;                      // A holds log(-A) (Mamba's A_log); dA is then the gradient of that log
} vl_cuda_scan_args;

}

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

// log(1 + e^x) without branches, from the fast exp and log: where e^x < 1/16 (there log(1 + e) would lose digits)
// by its series to the fourth power (relative error under 3e-6); past x = 20, x itself.
__device__ __forceinline__ float softplus_f(float x) {
    const float e = __expf(x);
    const float series = e * (1.f - e * (0.5f - e * (1.f / 3.f - 0.25f * e)));
    return x > 20.f ? x : (e < 0.0625f ? series : __logf(1.f + e));
}
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + __expf(-x)); }

// v[k] (step k of a group) summed over the four threads of the quad; thread q gets step q's sum.
__device__ __forceinline__ float quad_sum(const float (&v)[STEPS], int q) {
    const bool hi = q & 2, lo = q & 1;
    const float a0 = (hi ? v[2] : v[0]) + __shfl_xor_sync(FULL, hi ? v[0] : v[2], 2);
    const float a1 = (hi ? v[3] : v[1]) + __shfl_xor_sync(FULL, hi ? v[1] : v[3], 2);
    return (lo ? a1 : a0) + __shfl_xor_sync(FULL, lo ? a0 : a1, 1);
}

struct Lane {
    int64_t b, d;      // sequence and channel (d clamped into range; `on` says whether it is real)
    int q;             // the thread's place in its quad: it holds states q + 4 j
    int ch;            // channel within the block
    bool on;           // a real channel
};

__device__ __forceinline__ Lane lane_of(const vl_cuda_scan_args &p) {
    Lane l;
    l.ch = threadIdx.x >> 2;
    l.q = threadIdx.x & 3;
    l.b = blockIdx.y;
    const int64_t d = (int64_t)blockIdx.x * CHANNELS + l.ch;
    l.on = d < p.dim;
    l.d = l.on ? d : 0;
    return l;
}

__device__ __forceinline__ int state_of(const Lane &l, int j) { return j * QUAD + l.q; }

// A[d, n] of the lane's state j: read as it is, or as -exp of it where the caller passes A's log.
__device__ __forceinline__ float a_of(const vl_cuda_scan_args &p, const Lane &l, int j) {
    const float a = ((const float *)p.A)[l.d * p.nstate + state_of(l, j)];
    return p.a_log ? -expf(a) : a;
}
__device__ __forceinline__ bool state_on(const vl_cuda_scan_args &p, const Lane &l, int j) {
    return l.on && state_of(l, j) < p.nstate;
}

// Raw elements held in registers between their load and their use, so that the next tile's loads are in flight
// while the current tile is scanned: eight consecutive steps of a channel (one 16-byte load where aligned), or four
// of a state row of B or C.
template <typename T> struct Raw8 { uint4 r; };
template <> struct Raw8<float> { float4 a, b; };
template <typename T> struct Raw4 { uint2 r; };
template <> struct Raw4<float> { float4 r; };

__device__ __forceinline__ unsigned bits_of(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ unsigned bits_of(__half x) { return __half_as_ushort(x); }
template <typename T> __device__ __forceinline__ float from_bits(unsigned v);
template <> __device__ __forceinline__ float from_bits<__nv_bfloat16>(unsigned v) { return __uint_as_float(v << 16); }
template <> __device__ __forceinline__ float from_bits<__half>(unsigned v) { return __half2float(__ushort_as_half((unsigned short)v)); }
__device__ __forceinline__ float part(const float4 &v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }

template <typename T>
__device__ __forceinline__ void fetch8(Raw8<T> &x, const T *row, int64_t t, int64_t length, bool vec) {
    if (vec && t + 8 <= length) {
        x.r = *reinterpret_cast<const uint4 *>(row + t);
        return;
    }
    unsigned v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = t + j < length ? bits_of(row[t + j]) : 0u;
    x.r = make_uint4(v[0] | (v[1] << 16), v[2] | (v[3] << 16), v[4] | (v[5] << 16), v[6] | (v[7] << 16));
}
__device__ __forceinline__ void fetch8(Raw8<float> &x, const float *row, int64_t t, int64_t length, bool vec) {
    if (vec && t + 8 <= length) {
        x.a = *reinterpret_cast<const float4 *>(row + t);
        x.b = *reinterpret_cast<const float4 *>(row + t + 4);
        return;
    }
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = t + j < length ? row[t + j] : 0.f;
    x.a = make_float4(v[0], v[1], v[2], v[3]);
    x.b = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename T>
__device__ __forceinline__ float get(const Raw8<T> &x, int j) {
    const unsigned w = j < 2 ? x.r.x : j < 4 ? x.r.y : j < 6 ? x.r.z : x.r.w;
    return from_bits<T>((w >> ((j & 1) * 16)) & 0xffffu);
}
__device__ __forceinline__ float get(const Raw8<float> &x, int j) { return j < 4 ? part(x.a, j) : part(x.b, j - 4); }

template <typename T>
__device__ __forceinline__ void fetch4(Raw4<T> &x, const T *row, int64_t t, int64_t length, bool vec) {
    if (vec && t + 4 <= length) {
        x.r = *reinterpret_cast<const uint2 *>(row + t);
        return;
    }
    unsigned v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = t + j < length ? bits_of(row[t + j]) : 0u;
    x.r = make_uint2(v[0] | (v[1] << 16), v[2] | (v[3] << 16));
}
__device__ __forceinline__ void fetch4(Raw4<float> &x, const float *row, int64_t t, int64_t length, bool vec) {
    if (vec && t + 4 <= length) {
        x.r = *reinterpret_cast<const float4 *>(row + t);
        return;
    }
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = t + j < length ? row[t + j] : 0.f;
    x.r = make_float4(v[0], v[1], v[2], v[3]);
}
template <typename T>
__device__ __forceinline__ float get(const Raw4<T> &x, int j) {
    return from_bits<T>(((j < 2 ? x.r.x : x.r.y) >> ((j & 1) * 16)) & 0xffffu);
}
__device__ __forceinline__ float get(const Raw4<float> &x, int j) { return part(x.r, j); }

// What one thread loads of a tile: eight steps of its own channel from `k8`, and four steps of one state row of B
// and C from `k4`.
template <typename TI, typename TW>
struct Fetched {
    Raw8<TI> delta, u, z, dout;
    Raw4<TW> B, C;
};

// The block's group of B and C: its rows are the group's N rows of the (batch, groups * N, length) operands.
__device__ __forceinline__ unsigned group_of(const vl_cuda_scan_args &p) {
    return p.group_dim < p.dim ? blockIdx.x * CHANNELS / (unsigned)p.group_dim : 0u;
}

__device__ __forceinline__ int k8_of() { return (threadIdx.x & 3) * 8; }
__device__ __forceinline__ int bc_state() { return threadIdx.x >> 3; }
__device__ __forceinline__ int k4_of() { return (threadIdx.x & 7) * 4; }

// Issue the loads of the tile from t0 (z and dout only where `backward` asks for them).
template <typename TI, typename TW>
__device__ __forceinline__ void fetch(const vl_cuda_scan_args &p, const Lane &l, Fetched<TI, TW> &f, int64_t t0,
                                      bool backward) {
    const int64_t t = t0 + k8_of();
    const bool vec = p.vec;
    if (l.on) {
        fetch8(f.delta, (const TI *)p.delta + l.b * p.sdelta[0] + l.d * p.sdelta[1], t, p.length, vec);
        fetch8(f.u, (const TI *)p.u + l.b * p.su[0] + l.d * p.su[1], t, p.length, vec);
        if (p.z) fetch8(f.z, (const TI *)p.z + l.b * p.sz[0] + l.d * p.sz[1], t, p.length, vec);
        if (backward) fetch8(f.dout, (const TI *)p.dout + l.b * p.sdout[0] + l.d * p.sdout[1], t, p.length, vec);
    }
    const int n = bc_state();
    if (n < p.nstate) {
        const int64_t t4 = t0 + k4_of(), row = group_of(p) * p.nstate + n;
        fetch4(f.B, (const TW *)p.B + l.b * p.sB[0] + row * p.sB[1], t4, p.length, vec);
        fetch4(f.C, (const TW *)p.C + l.b * p.sC[0] + row * p.sC[1], t4, p.length, vec);
    }
}

// One tile of the block's operands, as float32: delta after bias and softplus (zero past the end and for channels
// past the last), u, the gate silu(z) (or 1), and B and C of each state (zero for states past N).
struct Tile {
    float dl[CHANNELS][ROW], u[CHANNELS][ROW], gate[CHANNELS][ROW];
    float B[MAX_STATES][ROW], C[MAX_STATES][ROW];
};
struct BackwardTile : Tile {
    float dy[CHANNELS][ROW];    // the gradient of y: dout * silu(z)
    float dzf[CHANNELS][ROW];   // dout * silu'(z): dz = y * dzf
    float sg[CHANNELS][ROW];    // softplus' of delta's pre-activation, or 1
};

__device__ __forceinline__ void put8(float *dst, const float (&v)[8]) {
    reinterpret_cast<float4 *>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4 *>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// Eight steps of a tile row (float32 in shared memory) to global memory from step t: one 16-byte store where
// aligned (rows aligned for vector access, eight steps in range), else element by element within the length.
template <typename T>
__device__ __forceinline__ void store8(T *row, const float *src, int64_t t, int64_t length, bool vec) {
    const float4 a = reinterpret_cast<const float4 *>(src)[0], b = reinterpret_cast<const float4 *>(src)[1];
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    if (vec && t + 8 <= length) {
        unsigned w[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) w[j] = bits_of(from_f<T>(v[2 * j])) | (bits_of(from_f<T>(v[2 * j + 1])) << 16);
        *reinterpret_cast<uint4 *>(row + t) = make_uint4(w[0], w[1], w[2], w[3]);
        return;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
        if (t + j < length) row[t + j] = from_f<T>(v[j]);
}
__device__ __forceinline__ void store8(float *row, const float *src, int64_t t, int64_t length, bool vec) {
    if (vec && t + 8 <= length) {
        reinterpret_cast<float4 *>(row + t)[0] = reinterpret_cast<const float4 *>(src)[0];
        reinterpret_cast<float4 *>(row + t)[1] = reinterpret_cast<const float4 *>(src)[1];
        return;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
        if (t + j < length) row[t + j] = src[j];
}

// Stage the fetched tile from t0; the backward's extra rows only where `dout_rows` is given.
template <typename TI, typename TW>
__device__ __forceinline__ void stage(const vl_cuda_scan_args &p, const Lane &l, const Fetched<TI, TW> &f,
                                      Tile &tile, BackwardTile *dout_rows, int64_t t0, float bias) {
    const int k8 = k8_of();
    float dl[8], uv[8], gate[8], dy[8], dzf[8], sg[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const bool in = l.on && t0 + k8 + j < p.length;
        const float raw = get(f.delta, j) + bias;
        dl[j] = in ? (p.softplus ? softplus_f(raw) : raw) : 0.f;
        uv[j] = in ? get(f.u, j) : 0.f;
        const float zv = (p.z && in) ? get(f.z, j) : 0.f;
        const float sz = sigmoid_f(zv);
        gate[j] = p.z ? zv * sz : 1.f;
        if (dout_rows) {
            const float go = in ? get(f.dout, j) : 0.f;
            dy[j] = go * gate[j];
            dzf[j] = p.z ? go * sz * (1.f + zv * (1.f - sz)) : 0.f;
            sg[j] = p.softplus ? sigmoid_f(raw) : 1.f;
        }
    }
    put8(&tile.dl[l.ch][k8], dl);
    put8(&tile.u[l.ch][k8], uv);
    put8(&tile.gate[l.ch][k8], gate);
    if (dout_rows) {
        put8(&dout_rows->dy[l.ch][k8], dy);
        put8(&dout_rows->dzf[l.ch][k8], dzf);
        put8(&dout_rows->sg[l.ch][k8], sg);
    }
    const int n = bc_state(), k4 = k4_of();
    float b4[4], c4[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const bool ok = n < p.nstate && t0 + k4 + j < p.length;
        b4[j] = ok ? get(f.B, j) : 0.f;
        c4[j] = ok ? get(f.C, j) : 0.f;
    }
    *reinterpret_cast<float4 *>(&tile.B[n][k4]) = make_float4(b4[0], b4[1], b4[2], b4[3]);
    *reinterpret_cast<float4 *>(&tile.C[n][k4]) = make_float4(c4[0], c4[1], c4[2], c4[3]);
}

__device__ __forceinline__ void read4(const float *src, float (&v)[STEPS]) {
    const float4 a = *reinterpret_cast<const float4 *>(src);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
}

// B and C of the thread's states for group s: rows q + 4 j (four threads of a quad read four consecutive rows).
__device__ __forceinline__ void read_states(const float (&rows)[MAX_STATES][ROW], const Lane &l, int s,
                                            float (&v)[SPT][STEPS]) {
#pragma unroll
    for (int j = 0; j < SPT; ++j) read4(&rows[state_of(l, j)][s * STEPS], v[j]);
}

__device__ __forceinline__ int64_t ckpt_at(const vl_cuda_scan_args &p, const Lane &l, int64_t chunk) {
    return ((l.b * p.dim + l.d) * p.nchunks + chunk) * MAX_STATES + SPT * l.q;
}

template <typename TI, typename TW>
__global__ void __launch_bounds__(THREADS, 4) scan_forward(const vl_cuda_scan_args p) {
    __shared__ __align__(16) Tile tile;
    const Lane l = lane_of(p);
    float A2[SPT];
#pragma unroll
    for (int j = 0; j < SPT; ++j)
        A2[j] = state_on(p, l, j) ? a_of(p, l, j) * LOG2E : 0.f;
    const float Dv = (p.D && l.on) ? ((const float *)p.D)[l.d] : 0.f;
    const float bias = (p.delta_bias && l.on) ? ((const float *)p.delta_bias)[l.d] : 0.f;
    TI *out = (TI *)p.out + l.b * p.sout[0] + l.d * p.sout[1];
    Fetched<TI, TW> f{};
    fetch(p, l, f, 0, false);
    float h[SPT] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t t0 = 0; t0 < p.length; t0 += TILE) {
        if (p.ckpt && l.on)
            *reinterpret_cast<float4 *>((float *)p.ckpt + ckpt_at(p, l, t0 / TILE)) = make_float4(h[0], h[1], h[2], h[3]);
        __syncthreads();
        stage(p, l, f, tile, nullptr, t0, bias);
        __syncthreads();
        if (t0 + TILE < p.length) fetch(p, l, f, t0 + TILE, false);
        for (int s = 0; s < GROUPS && t0 + s * STEPS < p.length; ++s) {
            float dl[STEPS], uu[STEPS], bb[SPT][STEPS], cc[SPT][STEPS], y[STEPS];
            read4(&tile.dl[l.ch][s * STEPS], dl);
            read4(&tile.u[l.ch][s * STEPS], uu);
            read_states(tile.B, l, s, bb);
            read_states(tile.C, l, s, cc);
#pragma unroll
            for (int k = 0; k < STEPS; ++k) {
                const float du = dl[k] * uu[k];
                y[k] = 0.f;
#pragma unroll
                for (int j = 0; j < SPT; ++j) {
                    h[j] = exp2f(dl[k] * A2[j]) * h[j] + du * bb[j][k];
                    y[k] += cc[j][k] * h[j];
                }
            }
            const int kk = s * STEPS + l.q;
            const float yk = (quad_sum(y, l.q) + Dv * tile.u[l.ch][kk]) * tile.gate[l.ch][kk];
            const int64_t t = t0 + kk;
            if (l.on && t < p.length) out[t] = from_f<TI>(yk);
        }
    }
    if (p.last) {
#pragma unroll
        for (int j = 0; j < SPT; ++j)
            if (state_on(p, l, j)) ((float *)p.last)[(l.b * p.dim + l.d) * p.nstate + state_of(l, j)] = h[j];
    }
}

struct BackwardShared {
    BackwardTile tile;
    float4 starts[GROUPS][THREADS];                  // each thread's states at the start of each group of the tile
    float partial[WARPS][2][MAX_STATES][ROW];        // dB, dC of each warp's channels over the tile
};

// v[X][j][k] (dB and dC of the thread's states for the group's steps) summed over the 8 channels of the warp: the
// thread with lane bits (x, j1, j0, q) gets X = x of state q + 4 (2 j1 + j0), all four steps.
__device__ __forceinline__ void channel_sum(float (&gB)[SPT][STEPS], float (&gC)[SPT][STEPS], int lane,
                                            float (&r)[STEPS]) {
    const bool x = lane & 16, j1 = lane & 8, j0 = lane & 4;
    float r1[SPT][STEPS], r2[2][STEPS];
#pragma unroll
    for (int j = 0; j < SPT; ++j)
#pragma unroll
        for (int k = 0; k < STEPS; ++k)
            r1[j][k] = (x ? gC[j][k] : gB[j][k]) + __shfl_xor_sync(FULL, x ? gB[j][k] : gC[j][k], 16);
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int k = 0; k < STEPS; ++k)
            r2[j][k] = (j1 ? r1[2 + j][k] : r1[j][k]) + __shfl_xor_sync(FULL, j1 ? r1[j][k] : r1[2 + j][k], 8);
#pragma unroll
    for (int k = 0; k < STEPS; ++k) r[k] = (j0 ? r2[1][k] : r2[0][k]) + __shfl_xor_sync(FULL, j0 ? r2[0][k] : r2[1][k], 4);
}

template <typename TI, typename TW>
__global__ void __launch_bounds__(THREADS, 3) scan_backward(const vl_cuda_scan_args p) {
    extern __shared__ __align__(16) unsigned char raw_shared[];
    BackwardShared &sh = *reinterpret_cast<BackwardShared *>(raw_shared);
    BackwardTile &tile = sh.tile;
    const Lane l = lane_of(p);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float Aj[SPT], A2[SPT], g[SPT], a_next[SPT], dA[SPT];
#pragma unroll
    for (int j = 0; j < SPT; ++j) {
        const bool on = state_on(p, l, j);
        Aj[j] = on ? a_of(p, l, j) : 0.f;
        A2[j] = Aj[j] * LOG2E;
        g[j] = (p.dlast && on) ? ((const float *)p.dlast)[(l.b * p.dim + l.d) * p.nstate + state_of(l, j)] : 0.f;
        a_next[j] = 1.f;
        dA[j] = 0.f;
    }
    const float Dv = (p.D && l.on) ? ((const float *)p.D)[l.d] : 0.f;
    const float bias = (p.delta_bias && l.on) ? ((const float *)p.delta_bias)[l.d] : 0.f;
    const int64_t row_du = l.b * p.sdu[0] + l.d * p.sdu[1], row_dd = l.b * p.sddelta[0] + l.d * p.sddelta[1];
    const int64_t row_out = l.b * p.sout[0] + l.d * p.sout[1], row_dz = l.b * p.sdz[0] + l.d * p.sdz[1];
    // The block's partial dB and dC: thread tid sums X = tid / 64, state (tid / 4) % 16, steps 8 (tid % 4) + [0, 8).
    const int sum_x = threadIdx.x >> 6, sum_n = (threadIdx.x >> 2) & 15, sum_k = (threadIdx.x & 3) * 8;
    float *dBC = p.dBC + (((l.b * gridDim.x + blockIdx.x) * 2 + sum_x) * MAX_STATES + sum_n) * p.length;

    float dD = 0.f, dbias = 0.f;
    Fetched<TI, TW> f{};
    fetch(p, l, f, (p.nchunks - 1) * TILE, true);
    for (int64_t c = p.nchunks - 1; c >= 0; --c) {
        const int64_t t0 = c * TILE;
        const int64_t left = (p.length - t0 + STEPS - 1) / STEPS;
        const int groups = left < GROUPS ? (int)left : GROUPS;
        __syncthreads();
        stage(p, l, f, tile, &tile, t0, bias);
        __syncthreads();
        if (c > 0) fetch(p, l, f, t0 - TILE, true);
        const float4 h0 = *reinterpret_cast<const float4 *>((const float *)p.ckpt + ckpt_at(p, l, c));
        float h[SPT] = {h0.x, h0.y, h0.z, h0.w};
        for (int s = 0; s < groups; ++s) {  // replay the tile for the group starts
            sh.starts[s][threadIdx.x] = make_float4(h[0], h[1], h[2], h[3]);
            float dl[STEPS], uu[STEPS], bb[SPT][STEPS];
            read4(&tile.dl[l.ch][s * STEPS], dl);
            read4(&tile.u[l.ch][s * STEPS], uu);
            read_states(tile.B, l, s, bb);
#pragma unroll
            for (int k = 0; k < STEPS; ++k) {
                const float du = dl[k] * uu[k];
#pragma unroll
                for (int j = 0; j < SPT; ++j) h[j] = exp2f(dl[k] * A2[j]) * h[j] + du * bb[j][k];
            }
        }
        for (int s = groups - 1; s >= 0; --s) {
            const int64_t tg = t0 + s * STEPS;
            float dl[STEPS], uu[STEPS], dy[STEPS], bb[SPT][STEPS], cc[SPT][STEPS];
            read4(&tile.dl[l.ch][s * STEPS], dl);
            read4(&tile.u[l.ch][s * STEPS], uu);
            read4(&tile.dy[l.ch][s * STEPS], dy);
            read_states(tile.B, l, s, bb);
            read_states(tile.C, l, s, cc);
            // replay the group: states, decays and the C-weighted states for y
            const float4 st = sh.starts[s][threadIdx.x];
            const float first[SPT] = {st.x, st.y, st.z, st.w};
            float hs[SPT][STEPS], a[SPT][STEPS], y[STEPS];
#pragma unroll
            for (int k = 0; k < STEPS; ++k) {
                const float du = dl[k] * uu[k];
                y[k] = 0.f;
#pragma unroll
                for (int j = 0; j < SPT; ++j) {
                    a[j][k] = exp2f(dl[k] * A2[j]);
                    hs[j][k] = a[j][k] * (k > 0 ? hs[j][k - 1] : first[j]) + du * bb[j][k];
                    y[k] += cc[j][k] * hs[j][k];
                }
            }
            // adjoint, backwards through the group. With S = sum_j g_j B_j and P = sum_j A_j g_j exp(delta A_j) h_j,prev
            // (both summed over the quad once): du = delta S + D dy and ddelta = (u S + P) softplus'.
            float S[STEPS], P[STEPS], gB[SPT][STEPS], gC[SPT][STEPS];
#pragma unroll
            for (int k = STEPS - 1; k >= 0; --k) {
                const float du = dl[k] * uu[k];
                S[k] = 0.f;
                P[k] = 0.f;
#pragma unroll
                for (int j = 0; j < SPT; ++j) {
                    g[j] = g[j] * a_next[j] + cc[j][k] * dy[k];
                    const float prev = k > 0 ? hs[j][k - 1] : first[j];
                    const float gah = g[j] * (a[j][k] * prev);
                    gB[j][k] = g[j] * du;
                    gC[j][k] = dy[k] * hs[j][k];
                    S[k] += g[j] * bb[j][k];
                    P[k] += Aj[j] * gah;
                    dA[j] += dl[k] * gah;
                    a_next[j] = a[j][k];
                }
            }
            const int kk = s * STEPS + l.q;
            const float u_k = tile.u[l.ch][kk], dy_k = tile.dy[l.ch][kk];
            const float yk = quad_sum(y, l.q) + Dv * u_k;
            const float S_k = quad_sum(S, l.q);
            const float du_k = tile.dl[l.ch][kk] * S_k + Dv * dy_k;
            const float dd_k = (u_k * S_k + quad_sum(P, l.q)) * tile.sg[l.ch][kk];
            // The step's results replace the tile's entries that no later group reads; the tile's rows are written
            // out whole, after the last group. (The quad read this group's entries before its sums above.)
            __syncwarp();
            tile.dy[l.ch][kk] = du_k;
            tile.sg[l.ch][kk] = dd_k;
            tile.dzf[l.ch][kk] *= yk;
            tile.gate[l.ch][kk] *= yk;
            if (l.on && tg + l.q < p.length) {
                dD += dy_k * u_k;
                dbias += dd_k;
            }
            float r[STEPS];
            channel_sum(gB, gC, lane, r);
            const int n = ((lane >> 2) & 3) * QUAD + l.q;
            *reinterpret_cast<float4 *>(&sh.partial[warp][lane >> 4][n][s * STEPS]) = make_float4(r[0], r[1], r[2], r[3]);
        }
        __syncthreads();
        // the block's sum of the warps' dB and dC for the tile: one partial row per block
        float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const float4 a = *reinterpret_cast<const float4 *>(&sh.partial[w][sum_x][sum_n][sum_k]);
            const float4 b = *reinterpret_cast<const float4 *>(&sh.partial[w][sum_x][sum_n][sum_k + 4]);
            v[0] += a.x; v[1] += a.y; v[2] += a.z; v[3] += a.w; v[4] += b.x; v[5] += b.y; v[6] += b.z; v[7] += b.w;
        }
        const int64_t t = t0 + sum_k;
        if (p.length % 4 == 0 && t + 8 <= p.length) {
            put8(dBC + t, v);
        } else {
#pragma unroll
            for (int k = 0; k < 8; ++k)
                if (t + k < p.length) dBC[t + k] = v[k];
        }
        if (l.on) {  // the tile's du, ddelta, dz and y: eight steps of the thread's channel each
            const int k8 = k8_of();
            store8((TI *)p.du + row_du, &tile.dy[l.ch][k8], t0 + k8, p.length, p.vec);
            store8((TI *)p.ddelta + row_dd, &tile.sg[l.ch][k8], t0 + k8, p.length, p.vec);
            if (p.z) store8((TI *)p.dz + row_dz, &tile.dzf[l.ch][k8], t0 + k8, p.length, p.vec);
            if (p.out_z) store8((TI *)p.out_z + row_out, &tile.gate[l.ch][k8], t0 + k8, p.length, p.vec);
        }
    }
#pragma unroll
    for (int j = 0; j < SPT; ++j)
        if (state_on(p, l, j))  // d/d log(-A) = A d/dA where A comes as its log
            atomicAdd(p.dA + l.d * p.nstate + state_of(l, j), p.a_log ? dA[j] * Aj[j] : dA[j]);
#pragma unroll
    for (int m = 2; m >= 1; m >>= 1) {
        dD += __shfl_xor_sync(FULL, dD, m);
        dbias += __shfl_xor_sync(FULL, dbias, m);
    }
    if (l.q == 0 && l.on) {
        if (p.dD) atomicAdd(p.dD + l.d, dD);
        if (p.dbias) atomicAdd(p.dbias + l.d, dbias);
    }
}

template <typename TI, typename TW>
static int launch(const vl_cuda_scan_args *p, int backward, cudaStream_t stream) {
    const dim3 grid((unsigned)((p->dim + CHANNELS - 1) / CHANNELS), (unsigned)p->batch);
    if (backward) {
        const int bytes = (int)sizeof(BackwardShared);  // over the 48 KB that a launch gets unasked
        const cudaError_t err =
            cudaFuncSetAttribute(scan_backward<TI, TW>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
        if (err != cudaSuccess) return (int)err;
        scan_backward<TI, TW><<<grid, THREADS, bytes, stream>>>(*p);
    } else {
        scan_forward<TI, TW><<<grid, THREADS, 0, stream>>>(*p);
    }
    return (int)cudaGetLastError();
}

template <typename TI>
static int launch_w(const vl_cuda_scan_args *p, int backward, cudaStream_t stream) {
    switch (p->w_dtype) {
        case 0: return launch<TI, float>(p, backward, stream);
        case 1: return launch<TI, __nv_bfloat16>(p, backward, stream);
        case 2: return launch<TI, __half>(p, backward, stream);
    }
    return -1;
}

// The backward's partial dB and dC summed over its blocks, in order (so the sums do not change from run to run):
// part (batch, blocks, 2, MAX_STATES, length) float32 -> out (batch, 2, nstate, length) with strides so (length's
// stride 1), in out_dtype. A thread sums four consecutive steps of one row.
template <typename T>
__global__ void __launch_bounds__(128) sum_partials(const float *part, int64_t blocks, int64_t nstate, int64_t length,
                                                     T *out, int64_t s0, int64_t s1, int64_t s2) {
    const int64_t t = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (t >= length) return;
    const int64_t row = blockIdx.y, x = (row / nstate) % 2, n = row % nstate, b = row / (2 * nstate);
    const int64_t step = 2 * MAX_STATES * length;
    const float *src = part + ((b * blocks * 2 + x) * MAX_STATES + n) * length + t;
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    if (length % 4 == 0) {  // sixteen loads in flight a thread: the sum waits on memory, not on its adds
#pragma unroll 16
        for (int64_t k = 0; k < blocks; ++k) {
            const float4 a = __ldcs(reinterpret_cast<const float4 *>(src + k * step));
            v[0] += a.x; v[1] += a.y; v[2] += a.z; v[3] += a.w;
        }
    } else {
        for (int64_t k = 0; k < blocks; ++k)
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (t + j < length) v[j] += src[k * step + j];
    }
    T *dst = out + b * s0 + x * s1 + n * s2 + t;
#pragma unroll
    for (int j = 0; j < 4; ++j)
        if (t + j < length) dst[j] = from_f<T>(v[j]);
}

extern "C" int vl_cuda_scan_sum(const float *part, int64_t batch, int64_t blocks, int64_t nstate, int64_t length,
                                void *out, int out_dtype, const int64_t *strides, void *stream) {
    if (batch == 0 || length == 0) return 0;
    const dim3 grid((unsigned)((length + 4 * 128 - 1) / (4 * 128)), (unsigned)(batch * 2 * nstate));
    const cudaStream_t s = (cudaStream_t)stream;
    const int64_t s0 = strides[0], s1 = strides[1], s2 = strides[2];
    switch (out_dtype) {
        case 0: sum_partials<<<grid, 128, 0, s>>>(part, blocks, nstate, length, (float *)out, s0, s1, s2); break;
        case 1: sum_partials<<<grid, 128, 0, s>>>(part, blocks, nstate, length, (__nv_bfloat16 *)out, s0, s1, s2); break;
        case 2: sum_partials<<<grid, 128, 0, s>>>(part, blocks, nstate, length, (__half *)out, s0, s1, s2); break;
        default: return -1;
    }
    return (int)cudaGetLastError();
}

extern "C" int vl_cuda_scan(const vl_cuda_scan_args *p, int backward, void *stream) {
    if (p->nstate > MAX_STATES || p->nstate < 1) return -2;
    if (p->length == 0 || p->batch == 0 || p->dim == 0) return 0;
    const cudaStream_t s = (cudaStream_t)stream;
    switch (p->in_dtype) {
        case 0: return launch_w<float>(p, backward, s);
        case 1: return launch_w<__nv_bfloat16>(p, backward, s);
        case 2: return launch_w<__half>(p, backward, s);
    }
    return -1;
}
