// The selective scan of Mamba-1 on CUDA: forward and backward, for inputs in float32, bfloat16 or float16.
//
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,   y_t = <C_t, h_t> + D * u_t,   out_t = y_t * silu(z_t)
//
// with delta_t = softplus(delta_raw_t + delta_bias) when asked. One thread holds one state (n) of one channel
// (d) of one sequence (b), and walks the sequence in steps of STEPS time steps: 16 consecutive lanes of a warp
// are the 16 states of a channel (N <= 16; lanes past N hold zeros), a block holds CHANNELS channels. The sums over
// the states (y in the forward; the gradients of u and delta in the backward) are taken once every STEPS steps by
// a butterfly that leaves lane k of each half-group with step k's sum, so that a shuffle serves a whole step, not a
// state. The block stages TILE steps of its channels' operands in shared memory, with delta's bias and softplus
// and the gate's factors done once per element, and each lane reads them as float4 vectors; the next tile's
// loads are issued into registers before the current tile is scanned, so that they arrive meanwhile. The gradients
// of B and C sum over channels: within the block here, across blocks by the caller (a float32 buffer of one
// partial sum per block, summed by torch).
//
// The forward keeps the state at the start of every TILE steps (float32, (batch, dim, chunks, 16)). The
// backward walks the chunks from the last: it replays a chunk from its saved state, keeping the state at the start
// of each group of STEPS steps in shared memory, then goes back through the groups, replaying each to have its
// states in registers, and runs the adjoint recurrence g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} backwards.
//
// Built by cuda_build.py with nvcc (-O3 --use_fast_math) for the card at hand; driven through ctypes by
// scan_cuda.py, which passes the torch stream. Time steps must be the unit-stride axis of every sequence tensor.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define LANES 16                       // state lanes per channel
#define CHANNELS 32                    // channels per block
#define THREADS (LANES * CHANNELS)     // 512
#define WARPS (THREADS / 32)
#define STEPS 8                        // time steps per group
#define TILE 64                        // time steps per tile staged in shared memory, and per saved state
#define GROUPS (TILE / STEPS)
#define ROW (TILE + 4)                 // a tile row's floats (the padding spreads rows over the banks)
#define FULL 0xffffffffu
#define LOG2E 1.4426950408889634f

extern "C" {

// Every pointer may be null where the argument is absent (D, z, delta_bias, last, ckpt, dlast).
typedef struct {
    int64_t batch, dim, length, nstate;
    int64_t nchunks;                    // ceil(length / TILE)
    int32_t softplus, in_dtype, w_dtype;   // dtypes: 0 float32, 1 bfloat16, 2 float16
    int32_t vec;                        // rows aligned for vector loads (4 steps; 2 for B and C)
    const void *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
    int64_t su[2], sdelta[2], sB[2], sC[2], sz[2];   // (batch, channel) strides; (batch, state) for B and C
    void *out, *last, *ckpt;            // out (batch, dim, length) contiguous; last (batch, dim, nstate)
    const void *dout, *dlast;           // dout contiguous like out; dlast (batch, dim, nstate) float32
    void *du, *ddelta, *dz;             // contiguous (batch, dim, length), in_dtype
    float *dA, *dD, *dbias;             // float32, zeroed by the caller (atomic sums)
    float *dBC;                         // (batch, blocks, 2, LANES, length) float32: partial sums per block
} vl_cuda_scan_args;

}

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float softplus_f(float x) { return x <= 20.f ? log1pf(__expf(x)) : x; }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + __expf(-x)); }

// v[0..STEPS) of each lane, summed over the 16 lanes of its half-warp; lane k (and k + 8) of the half-warp gets
// the sum for step k & 7. STEPS must be 8.
__device__ __forceinline__ float sum_states(float (&v)[STEPS], int lane) {
#pragma unroll
    for (int k = 0; k < STEPS; ++k) v[k] += __shfl_xor_sync(FULL, v[k], 8);
    const bool hi4 = lane & 4, hi2 = lane & 2, hi1 = lane & 1;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float send = hi4 ? v[k] : v[k + 4];
        const float keep = hi4 ? v[k + 4] : v[k];
        v[k] = keep + __shfl_xor_sync(FULL, send, 4);
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
        const float send = hi2 ? v[k] : v[k + 2];
        const float keep = hi2 ? v[k + 2] : v[k];
        v[k] = keep + __shfl_xor_sync(FULL, send, 2);
    }
    const float send = hi1 ? v[0] : v[1];
    const float keep = hi1 ? v[1] : v[0];
    return keep + __shfl_xor_sync(FULL, send, 1);
}

struct Lane {
    int64_t b, d;      // sequence and channel (d clamped into range; `on` says whether it is real)
    int n;             // state index of this lane
    int k;             // the step of a group that this lane finishes (its index in the half-warp, mod 8)
    int ch;            // channel within the block
    bool on, state_on; // a real channel; a real channel and state
};

__device__ __forceinline__ Lane lane_of(const vl_cuda_scan_args &p) {
    Lane l;
    l.ch = threadIdx.x >> 4;
    l.n = threadIdx.x & 15;
    l.k = l.n & 7;
    l.b = blockIdx.y;
    const int64_t d = (int64_t)blockIdx.x * CHANNELS + l.ch;
    l.on = d < p.dim;
    l.d = l.on ? d : 0;
    l.state_on = l.on && l.n < p.nstate;
    return l;
}

// Raw elements held in registers between their load and their use, so that the next tile's loads are in flight
// while the current tile is scanned: four consecutive steps of a channel (one 8- or 16-byte load where aligned), or
// two of a state row of B or C.
template <typename T> struct Raw4 { uint2 r; };
template <> struct Raw4<float> { float4 r; };
template <typename T> struct Raw2 { uint32_t r; };
template <> struct Raw2<float> { float2 r; };

__device__ __forceinline__ unsigned bits_of(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ unsigned bits_of(__half x) { return __half_as_ushort(x); }
template <typename T> __device__ __forceinline__ float from_bits(unsigned v);
template <> __device__ __forceinline__ float from_bits<__nv_bfloat16>(unsigned v) { return __uint_as_float(v << 16); }
template <> __device__ __forceinline__ float from_bits<__half>(unsigned v) { return __half2float(__ushort_as_half((unsigned short)v)); }

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
__device__ __forceinline__ float get(const Raw4<float> &x, int j) {
    return j == 0 ? x.r.x : j == 1 ? x.r.y : j == 2 ? x.r.z : x.r.w;
}
template <typename T>
__device__ __forceinline__ void fetch2(Raw2<T> &x, const T *row, int64_t t, int64_t length, bool vec) {
    if (vec && t + 2 <= length) {
        x.r = *reinterpret_cast<const uint32_t *>(row + t);
        return;
    }
    x.r = (t < length ? bits_of(row[t]) : 0u) | ((t + 1 < length ? bits_of(row[t + 1]) : 0u) << 16);
}
__device__ __forceinline__ void fetch2(Raw2<float> &x, const float *row, int64_t t, int64_t length, bool vec) {
    if (vec && t + 2 <= length) {
        x.r = *reinterpret_cast<const float2 *>(row + t);
        return;
    }
    x.r = make_float2(t < length ? row[t] : 0.f, t + 1 < length ? row[t + 1] : 0.f);
}
template <typename T>
__device__ __forceinline__ float get(const Raw2<T> &x, int j) { return from_bits<T>((x.r >> (j * 16)) & 0xffffu); }
__device__ __forceinline__ float get(const Raw2<float> &x, int j) { return j == 0 ? x.r.x : x.r.y; }

// What one thread loads of a tile: four steps of its channel (the channel of its lane) from `k4`, and two steps of
// one state row of B and C from `k2`.
template <typename TI, typename TW>
struct Fetched {
    Raw4<TI> delta, u, z, dout;
    Raw2<TW> B, C;
};

__device__ __forceinline__ int k4_of() { return (threadIdx.x & 15) * 4; }
__device__ __forceinline__ int bc_state() { return threadIdx.x >> 5; }
__device__ __forceinline__ int k2_of() { return (threadIdx.x & 31) * 2; }

// Issue the loads of the tile from t0 (z and dout only where `backward` asks for them).
template <typename TI, typename TW>
__device__ __forceinline__ void fetch(const vl_cuda_scan_args &p, const Lane &l, Fetched<TI, TW> &f, int64_t t0,
                                      bool backward) {
    const int64_t t = t0 + k4_of();
    const bool vec = p.vec;
    if (l.on) {
        fetch4(f.delta, (const TI *)p.delta + l.b * p.sdelta[0] + l.d * p.sdelta[1], t, p.length, vec);
        fetch4(f.u, (const TI *)p.u + l.b * p.su[0] + l.d * p.su[1], t, p.length, vec);
        if (p.z) fetch4(f.z, (const TI *)p.z + l.b * p.sz[0] + l.d * p.sz[1], t, p.length, vec);
        if (backward) fetch4(f.dout, (const TI *)p.dout + (l.b * p.dim + l.d) * p.length, t, p.length, vec);
    }
    const int n = bc_state();
    if (n < p.nstate) {
        const int64_t t2 = t0 + k2_of();
        fetch2(f.B, (const TW *)p.B + l.b * p.sB[0] + n * p.sB[1], t2, p.length, vec);
        fetch2(f.C, (const TW *)p.C + l.b * p.sC[0] + n * p.sC[1], t2, p.length, vec);
    }
}

// One tile of the block's operands, as float32: delta after bias and softplus (zero past the end and for channels
// past the last), u, their product, and B and C of each state (zero for states past N).
struct Tile {
    float dl[CHANNELS][ROW], u[CHANNELS][ROW], du[CHANNELS][ROW];
    float B[LANES][ROW], C[LANES][ROW];
};
struct ForwardTile : Tile {
    float gate[CHANNELS][ROW];  // silu(z), or 1
};
struct BackwardTile : Tile {
    float dy[CHANNELS][ROW];    // the gradient of y: dout * silu(z)
    float dzf[CHANNELS][ROW];   // dout * silu'(z): dz = y * dzf
    float sg[CHANNELS][ROW];    // softplus' of delta's pre-activation, or 1
};

template <typename TI, typename TW>
__device__ __forceinline__ void stage_common(const vl_cuda_scan_args &p, const Lane &l, const Fetched<TI, TW> &f,
                                             Tile &tile, int64_t t0, float bias, float (&raw)[4], bool (&in)[4]) {
    const int k4 = k4_of();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        in[j] = l.on && t0 + k4 + j < p.length;
        raw[j] = get(f.delta, j) + bias;
        const float dl = in[j] ? (p.softplus ? softplus_f(raw[j]) : raw[j]) : 0.f;
        const float uv = in[j] ? get(f.u, j) : 0.f;
        tile.dl[l.ch][k4 + j] = dl;
        tile.u[l.ch][k4 + j] = uv;
        tile.du[l.ch][k4 + j] = dl * uv;
    }
    const int n = bc_state(), k2 = k2_of();
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const bool ok = n < p.nstate && t0 + k2 + j < p.length;
        tile.B[n][k2 + j] = ok ? get(f.B, j) : 0.f;
        tile.C[n][k2 + j] = ok ? get(f.C, j) : 0.f;
    }
}

template <typename TI, typename TW>
__device__ __forceinline__ void stage(const vl_cuda_scan_args &p, const Lane &l, const Fetched<TI, TW> &f,
                                      ForwardTile &tile, int64_t t0, float bias) {
    float raw[4];
    bool in[4];
    stage_common(p, l, f, tile, t0, bias, raw, in);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float zv = (p.z && in[j]) ? get(f.z, j) : 0.f;
        tile.gate[l.ch][k4_of() + j] = p.z ? zv * sigmoid_f(zv) : 1.f;
    }
}

template <typename TI, typename TW>
__device__ __forceinline__ void stage(const vl_cuda_scan_args &p, const Lane &l, const Fetched<TI, TW> &f,
                                      BackwardTile &tile, int64_t t0, float bias) {
    float raw[4];
    bool in[4];
    stage_common(p, l, f, tile, t0, bias, raw, in);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int k = k4_of() + j;
        const float go = in[j] ? get(f.dout, j) : 0.f;
        if (p.z) {
            const float zv = in[j] ? get(f.z, j) : 0.f;
            const float sz = sigmoid_f(zv);
            tile.dy[l.ch][k] = go * zv * sz;
            tile.dzf[l.ch][k] = go * sz * (1.f + zv * (1.f - sz));
        } else {
            tile.dy[l.ch][k] = go;
            tile.dzf[l.ch][k] = 0.f;
        }
        tile.sg[l.ch][k] = p.softplus ? sigmoid_f(raw[j]) : 1.f;
    }
}

__device__ __forceinline__ void read8(const float *src, float (&v)[STEPS]) {
    const float4 a = reinterpret_cast<const float4 *>(src)[0], b = reinterpret_cast<const float4 *>(src)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

template <typename TI, typename TW>
__global__ void __launch_bounds__(THREADS, 1) scan_forward(const vl_cuda_scan_args p) {
    __shared__ __align__(16) ForwardTile tile;
    const Lane l = lane_of(p);
    const float A2 = l.state_on ? ((const float *)p.A)[l.d * p.nstate + l.n] * LOG2E : 0.f;
    const float Dv = (p.D && l.on) ? ((const float *)p.D)[l.d] : 0.f;
    const float bias = (p.delta_bias && l.on) ? ((const float *)p.delta_bias)[l.d] : 0.f;
    TI *out = (TI *)p.out + (l.b * p.dim + l.d) * p.length;
    float *ckpt = p.ckpt ? (float *)p.ckpt + (l.b * p.dim + l.d) * p.nchunks * LANES + l.n : nullptr;
    Fetched<TI, TW> f{};
    fetch(p, l, f, 0, false);
    float h = 0.f;
    for (int64_t t0 = 0; t0 < p.length; t0 += TILE) {
        if (ckpt && l.on) ckpt[(t0 / TILE) * LANES] = h;
        __syncthreads();
        stage(p, l, f, tile, t0, bias);
        __syncthreads();
        if (t0 + TILE < p.length) fetch(p, l, f, t0 + TILE, false);
        for (int s = 0; s < GROUPS && t0 + s * STEPS < p.length; ++s) {
            float dl[STEPS], du[STEPS], bb[STEPS], cc[STEPS], y[STEPS];
            read8(&tile.dl[l.ch][s * STEPS], dl);
            read8(&tile.du[l.ch][s * STEPS], du);
            read8(&tile.B[l.n][s * STEPS], bb);
            read8(&tile.C[l.n][s * STEPS], cc);
#pragma unroll
            for (int k = 0; k < STEPS; ++k) {
                h = exp2f(dl[k] * A2) * h + du[k] * bb[k];
                y[k] = cc[k] * h;
            }
            const int kk = s * STEPS + l.k;
            const float yk = (sum_states(y, l.n) + Dv * tile.u[l.ch][kk]) * tile.gate[l.ch][kk];
            const int64_t t = t0 + kk;
            if (l.n < 8 && l.on && t < p.length) out[t] = from_f<TI>(yk);
        }
    }
    if (p.last && l.state_on) ((float *)p.last)[(l.b * p.dim + l.d) * p.nstate + l.n] = h;
}

struct BackwardShared {
    BackwardTile tile;
    float starts[GROUPS][THREADS];              // the state at the start of each group of the tile
    float partial[WARPS][2][LANES][STEPS];      // dB, dC of each warp's channel pair, for one group
};

template <typename TI, typename TW>
__global__ void __launch_bounds__(THREADS, 1) scan_backward(const vl_cuda_scan_args p) {
    extern __shared__ __align__(16) unsigned char raw_shared[];
    BackwardShared &sh = *reinterpret_cast<BackwardShared *>(raw_shared);
    BackwardTile &tile = sh.tile;
    const Lane l = lane_of(p);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float A = l.state_on ? ((const float *)p.A)[l.d * p.nstate + l.n] : 0.f;
    const float A2 = A * LOG2E;
    const float Dv = (p.D && l.on) ? ((const float *)p.D)[l.d] : 0.f;
    const float bias = (p.delta_bias && l.on) ? ((const float *)p.delta_bias)[l.d] : 0.f;
    const int64_t row = (l.b * p.dim + l.d) * p.length;
    const float *ckpt = (const float *)p.ckpt + (l.b * p.dim + l.d) * p.nchunks * LANES + l.n;
    float *dBC = p.dBC + ((l.b * gridDim.x + blockIdx.x) * 2) * LANES * p.length;

    float g = (p.dlast && l.state_on) ? ((const float *)p.dlast)[(l.b * p.dim + l.d) * p.nstate + l.n] : 0.f;
    float a_next = 1.f, dA = 0.f, dD = 0.f, dbias = 0.f;
    Fetched<TI, TW> f{};
    fetch(p, l, f, (p.nchunks - 1) * TILE, true);
    for (int64_t c = p.nchunks - 1; c >= 0; --c) {
        const int64_t t0 = c * TILE;
        const int64_t left = (p.length - t0 + STEPS - 1) / STEPS;
        const int groups = left < GROUPS ? (int)left : GROUPS;
        __syncthreads();
        stage(p, l, f, tile, t0, bias);
        __syncthreads();
        if (c > 0) fetch(p, l, f, t0 - TILE, true);
        float h = ckpt[c * LANES];
        for (int s = 0; s < groups; ++s) {  // replay the tile for the group starts
            sh.starts[s][threadIdx.x] = h;
            float dl[STEPS], du[STEPS], bb[STEPS];
            read8(&tile.dl[l.ch][s * STEPS], dl);
            read8(&tile.du[l.ch][s * STEPS], du);
            read8(&tile.B[l.n][s * STEPS], bb);
#pragma unroll
            for (int k = 0; k < STEPS; ++k) h = exp2f(dl[k] * A2) * h + du[k] * bb[k];
        }
        for (int s = groups - 1; s >= 0; --s) {
            const int64_t tg = t0 + s * STEPS;
            float dl[STEPS], du[STEPS], uu[STEPS], bb[STEPS], cc[STEPS], dy[STEPS];
            read8(&tile.dl[l.ch][s * STEPS], dl);
            read8(&tile.du[l.ch][s * STEPS], du);
            read8(&tile.u[l.ch][s * STEPS], uu);
            read8(&tile.B[l.n][s * STEPS], bb);
            read8(&tile.C[l.n][s * STEPS], cc);
            read8(&tile.dy[l.ch][s * STEPS], dy);
            // replay the group: states, decays and the C-weighted states for y
            float hs[STEPS], a[STEPS], y[STEPS];
            float hp = sh.starts[s][threadIdx.x];
            const float h_first = hp;
#pragma unroll
            for (int k = 0; k < STEPS; ++k) {
                a[k] = exp2f(dl[k] * A2);
                hp = a[k] * hp + du[k] * bb[k];
                hs[k] = hp;
                y[k] = cc[k] * hp;
            }
            // adjoint, backwards through the group
            float gu[STEPS], gd[STEPS], gB[STEPS], gC[STEPS];
#pragma unroll
            for (int k = STEPS - 1; k >= 0; --k) {
                g = g * a_next + cc[k] * dy[k];
                const float prev = k > 0 ? hs[k - 1] : h_first;
                const float gdl = g * dl[k];
                gB[k] = g * du[k];
                gC[k] = dy[k] * hs[k];
                gu[k] = gdl * bb[k];
                const float ah = a[k] * prev;
                gd[k] = g * (A * ah + uu[k] * bb[k]);
                dA += gdl * ah;
                a_next = a[k];
            }
            const int kk = s * STEPS + l.k;
            const float u_k = tile.u[l.ch][kk], dy_k = tile.dy[l.ch][kk];
            const float yk = sum_states(y, l.n) + Dv * u_k;
            const float du_k = sum_states(gu, l.n) + Dv * dy_k;
            const float dd_k = sum_states(gd, l.n) * tile.sg[l.ch][kk];
            const int64_t tk = tg + l.k;
            if (l.n < 8 && l.on && tk < p.length) {
                ((TI *)p.du)[row + tk] = from_f<TI>(du_k);
                ((TI *)p.ddelta)[row + tk] = from_f<TI>(dd_k);
                if (p.z) ((TI *)p.dz)[row + tk] = from_f<TI>(yk * tile.dzf[l.ch][kk]);
                dD += dy_k * u_k;
                dbias += dd_k;
            }
            // dB and dC: the warp's two channels, then the block's warps, then one partial row per block
#pragma unroll
            for (int k = 0; k < STEPS; ++k) {
                gB[k] += __shfl_xor_sync(FULL, gB[k], 16);
                gC[k] += __shfl_xor_sync(FULL, gC[k], 16);
            }
            if (lane < 16) {
#pragma unroll
                for (int k = 0; k < STEPS; ++k) {
                    sh.partial[warp][0][lane][k] = gB[k];
                    sh.partial[warp][1][lane][k] = gC[k];
                }
            }
            __syncthreads();
            if (threadIdx.x < 2 * LANES * STEPS) {
                const int q = threadIdx.x / (LANES * STEPS), n = (threadIdx.x / STEPS) % LANES, k = threadIdx.x % STEPS;
                float sum = 0.f;
#pragma unroll
                for (int w = 0; w < WARPS; ++w) sum += sh.partial[w][q][n][k];
                if (tg + k < p.length) dBC[(q * LANES + n) * p.length + tg + k] = sum;
            }
            __syncthreads();
        }
    }
    if (l.state_on) atomicAdd(p.dA + l.d * p.nstate + l.n, dA);
#pragma unroll
    for (int m = 4; m >= 1; m >>= 1) {
        dD += __shfl_xor_sync(FULL, dD, m);
        dbias += __shfl_xor_sync(FULL, dbias, m);
    }
    if (l.n == 0 && l.on) {
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

extern "C" int vl_cuda_scan(const vl_cuda_scan_args *p, int backward, void *stream) {
    if (p->nstate > LANES || p->nstate < 1) return -2;
    if (p->length == 0 || p->batch == 0 || p->dim == 0) return 0;
    const cudaStream_t s = (cudaStream_t)stream;
    switch (p->in_dtype) {
        case 0: return launch_w<float>(p, backward, s);
        case 1: return launch_w<__nv_bfloat16>(p, backward, s);
        case 2: return launch_w<__half>(p, backward, s);
    }
    return -1;
}
