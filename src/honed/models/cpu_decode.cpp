// honed: one decode step of a Llama-family decoder (float32, batch 1, CPU with AVX2 + FMA),
// written as a single OpenMP parallel region with barriers, as llama.cpp writes its CPU graph.
//
// Why by hand: at batch 1 a step reads every weight once, so its speed is the memory
// bandwidth the weight reads reach. On the 2-core AVX2 machines honed is measured on,
// inductor's compiled step (honed.models.fast_decode) spends ~37 ms a token in its weight
// reductions (~14.5 GB/s) and ~8 ms in its Python wrapper and guards; MKL's GEMV reads at
// ~8 GB/s. Here each thread streams a contiguous run of weight rows once, one row at a time
// (sequential addresses the hardware prefetcher follows: ~17-18 GB/s against ~19-22 for a
// plain float32 sum), and the ~300 small steps between the products (norms, rotary, the
// cache write, attention, SiLU, residuals) cost a barrier each instead of a dispatch each.
// The numbers are in docs/benchmarks.md (decode). No torch headers: the library builds in
// about a second with the system compiler and is called through ctypes with data pointers;
// it shares torch's OpenMP runtime (libgomp.so.1, already loaded by torch).
//
// Layout (what honed/models/cpu_decode.py passes):
//   dims  = [layers, hidden H, intermediate I, heads Hq, kv heads Hkv, head dim D, vocab V,
//            cache length L, threads]
//   ptrs  = [embed (V, H), final norm (H), lm head (V, H), cos (L, D), sin (L, D),
//           LoRA scales (layers, 7) float32 or 0, LoRA ranks (layers, 7) int64 or 0] then per
//           layer: [attn norm (H), q (Hq*D, H), k (Hkv*D, H), v (Hkv*D, H), o (H, Hq*D),
//           mlp norm (H), gate (I, H), up (I, H), down (H, I), keys (Hkv, L, D),
//           values (Hkv, L, D), written length (int64 scalar)], then for q k v o gate up
//           down in that order [LoRA A (r, in), LoRA B (out, r)] (0 where a module has
//           none), then their biases (out) (0 where none, as in Llama; Qwen2 has q/k/v ones):
//           y = W x + bias + scale * B (A x), as peft's LoRA layers compute it (dropout off).
//   mask  = (L,) int64, 1 where a cache column is attended (the new column included)
//   scratch = H + H + Hq*D + 2*Hkv*D + Hq*D + H + I + Hq*L floats
//   logits  = (V,) floats out
// Returns 0; else nothing is written: 1 when the cache is full, 2 for a rank above kMaxRank,
// 3 for a token id or position out of range.
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include <initializer_list>

namespace {

constexpr int kHeader = 7;
constexpr int kPerLayer = 12 + 14 + 7;
constexpr int kBias = 12 + 14;  // a layer's bias pointers start here
constexpr int kMaxRank = 256;
enum Module { kQ, kK, kV, kO, kGate, kUp, kDown, kModules };

// One layer's LoRA: per module A (r, in), B (out, r), r, scale, and t = A x (r floats).
struct Lora {
  const float* a[kModules];
  const float* b[kModules];
  int64_t r[kModules];
  float scale[kModules];
  float* t[kModules];
  const float* bias[kModules];  // the projections' own biases (not LoRA's), or null
  bool any;
};

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  lo = _mm_add_ps(lo, _mm256_extractf128_ps(v, 1));
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// dot(w, x) over K floats: four FMA chains hide the FMA latency; one row at a time keeps each
// thread's weight reads sequential.
inline float dot(const float* w, const float* x, int64_t K) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
  }
  for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; k < K; ++k) s += w[k] * x[k];
  return s;
}

// y[r] = dot(W[r], x) for the rows of up to three (n_i, K) matrices taken as one row range,
// split into contiguous runs across the team (called by every thread of the region).
// A segment may carry a LoRA term: y[row] += scale * dot(B[row], t) with t = A x (r floats,
// computed before by one thread).
struct Seg {
  const float* w;
  float* y;
  int64_t n;
  const float* bias = nullptr;
  const float* lora_b = nullptr;
  const float* t = nullptr;
  int64_t r = 0;
  float scale = 0.f;
};

inline float row_out(const Seg& s, int64_t row, const float* x, int64_t K) {
  float y = dot(s.w + row * K, x, K);
  if (s.bias != nullptr) y += s.bias[row];
  if (s.lora_b != nullptr) y += s.scale * dot(s.lora_b + row * s.r, s.t, s.r);
  return y;
}

void gemv(const float* x, int64_t K, const Seg* s, int ns) {
  int64_t total = 0;
  for (int i = 0; i < ns; ++i) total += s[i].n;
#pragma omp for schedule(static)
  for (int64_t r = 0; r < total; ++r) {
    int i = 0;
    int64_t row = r;
    while (row >= s[i].n) row -= s[i++].n;
    s[i].y[row] = row_out(s[i], row, x, K);
  }
}

// t = A x for the given modules (one thread; r x K multiply-adds each, small next to W).
void lora_down(const Lora& lo, std::initializer_list<Module> mods, const float* x, int64_t K) {
  for (Module m : mods) {
    if (lo.a[m] == nullptr) continue;
    for (int64_t j = 0; j < lo.r[m]; ++j) lo.t[m][j] = dot(lo.a[m] + j * K, x, K);
  }
}

Seg seg(const float* w, float* y, int64_t n, const Lora& lo, Module m) {
  Seg s{w, y, n, lo.bias[m]};
  if (lo.a[m] != nullptr) {
    s.lora_b = lo.b[m];
    s.t = lo.t[m];
    s.r = lo.r[m];
    s.scale = lo.scale[m];
  }
  return s;
}

// HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) * weight (sum kept in double: H terms).
void rms_norm(const float* x, const float* w, float* out, int64_t H, double eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < H; ++i) ss += (double)x[i] * x[i];
  const float r = (float)(1.0 / sqrt(ss / H + eps));
  for (int64_t i = 0; i < H; ++i) out[i] = w[i] * (x[i] * r);
}

// HF rotate_half rotary: out[i] = x[i] cos[i] - x[i + D/2] sin[i] (first half),
// x[i] cos[i] + x[i - D/2] sin[i] (second half); cos/sin already carry the rope scaling.
void rope(float* x, const float* cos, const float* sin, int64_t D) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) {
    const float a = x[i], b = x[i + h];
    x[i] = a * cos[i] - b * sin[i];
    x[i + h] = b * cos[i + h] + a * sin[i + h];
  }
}

// One query head against its kv head's cache columns [0, n): softmax(q.K / sqrt(D)) V,
// masked columns skipped. scores: n floats of scratch.
void attend(const float* q, const float* keys, const float* values, const int64_t* mask,
            int64_t n, int64_t D, float* scores, float* out) {
  const float scale = 1.0f / sqrtf((float)D);
  float top = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = mask[j] ? dot(keys + j * D, q, D) * scale : -INFINITY;
    if (scores[j] > top) top = scores[j];
  }
  float total = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = mask[j] ? expf(scores[j] - top) : 0.f;
    total += scores[j];
  }
  for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    if (!mask[j]) continue;
    const float p = scores[j] / total;
    const float* v = values + j * D;
    for (int64_t d = 0; d < D; ++d) out[d] += p * v[d];
  }
}

struct Dims {
  int64_t layers, H, I, Hq, Hkv, D, V, L, threads;
};

struct Scratch {
  float *x, *xn, *q, *k, *v, *att, *tmp, *act, *scores;
  Scratch(float* s, const Dims& d) {
    x = s;
    xn = x + d.H;
    q = xn + d.H;
    k = q + d.Hq * d.D;
    v = k + d.Hkv * d.D;
    att = v + d.Hkv * d.D;
    tmp = att + d.Hq * d.D;
    act = tmp + d.H;
    scores = act + d.I;
  }
};

// Attention half of a layer: norm, q/k/v, rotary, cache write, attention, o, residual.
void attention_block(const Dims& d, const uint64_t* p, const Lora& lo, const float* cos,
                     const float* sin, const int64_t* mask, int64_t col, double eps, Scratch& s) {
  const float* const* w = reinterpret_cast<const float* const*>(p);
  float* keys = reinterpret_cast<float*>(p[9]);
  float* values = reinterpret_cast<float*>(p[10]);
  const int64_t kv = d.Hkv * d.D;
#pragma omp single
  {
    rms_norm(s.x, w[0], s.xn, d.H, eps);
    lora_down(lo, {kQ, kK, kV}, s.xn, d.H);
  }
  const Seg qkv[3] = {seg(w[1], s.q, d.Hq * d.D, lo, kQ), seg(w[2], s.k, kv, lo, kK),
                      seg(w[3], s.v, kv, lo, kV)};
  gemv(s.xn, d.H, qkv, 3);
#pragma omp single
  {
    for (int64_t h = 0; h < d.Hq; ++h) rope(s.q + h * d.D, cos, sin, d.D);
    for (int64_t h = 0; h < d.Hkv; ++h) {
      rope(s.k + h * d.D, cos, sin, d.D);
      float* kc = keys + (h * d.L + col) * d.D;
      float* vc = values + (h * d.L + col) * d.D;
      for (int64_t i = 0; i < d.D; ++i) {
        kc[i] = s.k[h * d.D + i];
        vc[i] = s.v[h * d.D + i];
      }
    }
    *reinterpret_cast<int64_t*>(p[11]) = col + 1;
  }
  const int64_t group = d.Hq / d.Hkv;
#pragma omp for schedule(static)
  for (int64_t h = 0; h < d.Hq; ++h) {
    const int64_t g = h / group;
    attend(s.q + h * d.D, keys + g * d.L * d.D, values + g * d.L * d.D, mask, col + 1, d.D,
           s.scores + h * d.L, s.att + h * d.D);
  }
  if (lo.any) {
#pragma omp single
    lora_down(lo, {kO}, s.att, d.Hq * d.D);
  }
  const Seg o[1] = {seg(w[4], s.tmp, d.H, lo, kO)};
  gemv(s.att, d.Hq * d.D, o, 1);
#pragma omp single
  {
    for (int64_t i = 0; i < d.H; ++i) s.x[i] += s.tmp[i];
    rms_norm(s.x, w[5], s.xn, d.H, eps);
    lora_down(lo, {kGate, kUp}, s.xn, d.H);
  }
}

// MLP half: act = silu(gate x) * (up x), row by row (a thread reads gate row i then up row
// i), then down and the residual.
void mlp_block(const Dims& d, const uint64_t* p, const Lora& lo, Scratch& s) {
  const float* const* w = reinterpret_cast<const float* const*>(p);
  const Seg gate = seg(w[6], nullptr, d.I, lo, kGate), up = seg(w[7], nullptr, d.I, lo, kUp);
#pragma omp for schedule(static)
  for (int64_t i = 0; i < d.I; ++i) {
    const float g = row_out(gate, i, s.xn, d.H);
    const float u = row_out(up, i, s.xn, d.H);
    s.act[i] = g / (1.f + expf(-g)) * u;
  }
  if (lo.any) {
#pragma omp single
    lora_down(lo, {kDown}, s.act, d.I);
  }
  const Seg down[1] = {seg(w[8], s.tmp, d.H, lo, kDown)};
  gemv(s.act, d.I, down, 1);
#pragma omp single
  for (int64_t i = 0; i < d.H; ++i) s.x[i] += s.tmp[i];
}

// The LoRA terms and biases of layer l (no LoRA when the header has no scales or the layer
// no A/B).
Lora layer_lora(const uint64_t* ptrs, int64_t l, float (*t)[kMaxRank]) {
  Lora lo{};
  const float* scales = reinterpret_cast<const float*>(ptrs[5]);
  const int64_t* ranks = reinterpret_cast<const int64_t*>(ptrs[6]);
  const uint64_t* p = ptrs + kHeader + l * kPerLayer + 12;
  for (int m = 0; m < kModules; ++m) {
    lo.t[m] = t[m];
    lo.bias[m] = reinterpret_cast<const float*>(p[kBias - 12 + m]);
    if (scales == nullptr || p[2 * m] == 0) continue;
    lo.a[m] = reinterpret_cast<const float*>(p[2 * m]);
    lo.b[m] = reinterpret_cast<const float*>(p[2 * m + 1]);
    lo.r[m] = ranks[l * kModules + m];
    lo.scale[m] = scales[l * kModules + m];
    lo.any = true;
  }
  return lo;
}

}  // namespace

extern "C" int honed_llama_step(const int64_t* dims, double eps, const uint64_t* ptrs,
                                int64_t token, int64_t pos, const int64_t* mask, float* logits,
                                float* scratch) {
  const Dims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7], dims[8]};
  const int64_t col = *reinterpret_cast<const int64_t*>(ptrs[kHeader + 11]);  // layer 0's
  if (col >= d.L || pos >= d.L) return 1;
  if (token < 0 || token >= d.V || pos < 0) return 3;
  const int64_t* ranks = reinterpret_cast<const int64_t*>(ptrs[6]);
  for (int64_t i = 0; ranks != nullptr && i < d.layers * kModules; ++i)
    if (ranks[i] > kMaxRank) return 2;
  float t[kModules][kMaxRank];  // A x per module, shared by the team
  const float* embed = reinterpret_cast<const float*>(ptrs[0]);
  const float* cos = reinterpret_cast<const float*>(ptrs[3]) + pos * d.D;
  const float* sin = reinterpret_cast<const float*>(ptrs[4]) + pos * d.D;
  Scratch s(scratch, d);
  for (int64_t i = 0; i < d.H; ++i) s.x[i] = embed[token * d.H + i];
#pragma omp parallel num_threads((int)d.threads)
  {
    for (int64_t l = 0; l < d.layers; ++l) {
      const uint64_t* p = ptrs + kHeader + l * kPerLayer;
      const Lora lo = layer_lora(ptrs, l, t);
      attention_block(d, p, lo, cos, sin, mask, col, eps, s);
      mlp_block(d, p, lo, s);
    }
#pragma omp single
    rms_norm(s.x, reinterpret_cast<const float*>(ptrs[1]), s.xn, d.H, eps);
    const Seg head[1] = {{reinterpret_cast<const float*>(ptrs[2]), logits, d.V}};
    gemv(s.xn, d.H, head, 1);
  }
  return 0;
}
