// honed: int8 Linear layers and per-text attention for encoder classifiers on CPUs with AVX2
// (honed/models/cpu_encoder.py calls these through ctypes; no torch headers).
//
// Why by hand. On the 2-core AVX2-only machines honed is measured on (no VNNI), an int8 MiniLM
// classifier spends ~70% of its time in torch's dynamic int8 Linear (fbgemm, ~80-120 GOP/s a
// core) and ~11% in attention, where each packed text is one scaled_dot_product_attention call
// of ~150 us for ~1 MFLOP of work. Without VNNI an int8 product is vpmaddubsw (u8 x s8 pairs
// summed into int16) then vpmaddwd (int16 pairs into int32): with activations and weights both
// kept to 7 bits (|u * w| <= 127 * 63), two vpmaddubsw results add in int16 without overflow
// before one vpmaddwd, so eight k steps cost three multiply-port instructions instead of four.
// That, a 4 x 16 register tile and L2-sized row blocks run these shapes at ~130-190 GOP/s a
// core, 1.2-1.8x fbgemm (docs/benchmarks.md, /v1/classify). Quantization is finer than torch's:
// per token (asymmetric, 7 bits) for activations, per output channel (symmetric, 7 bits) for
// weights, against one scale per tensor: the output error measured ~0.016 against ~0.021
// relative to float32.
//
// Layouts:
//   weights W (N, K) float32 row-major (torch's Linear weight), K a multiple of 8; packed into
//   ceil(N/16) blocks of 16 output channels, each K/8 groups of 128 bytes: [k half 0..1]
//   [8-channel half 0..1][channel 0..7][4 consecutive k], so one 32-byte load holds 4 k values
//   of 8 channels, the operand vpmaddubsw wants.
//   y (M, N) = x (M, K) W^T + bias, all float32 row-major.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int kTileRows = 4;       // rows of x per register tile
constexpr int kBlock = 16;         // output channels per packed block
constexpr int kMaxHeadDim = 256;   // attention: head dims up to this (multiples of 8)
constexpr int64_t kRowBlockBytes = 96 * 1024;  // activation codes per row block (L2)

// x row -> 7-bit codes u = round((x - lo) / s), x ~ lo + s * u, u in [0, 127].
inline void quantize_row(const float* x, int64_t K, uint8_t* u, float* s, float* lo) {
  __m256 vmin = _mm256_set1_ps(INFINITY), vmax = _mm256_set1_ps(-INFINITY);
  for (int64_t k = 0; k < K; k += 8) {
    const __m256 v = _mm256_loadu_ps(x + k);
    vmin = _mm256_min_ps(vmin, v);
    vmax = _mm256_max_ps(vmax, v);
  }
  float mins[8], maxs[8];
  _mm256_storeu_ps(mins, vmin);
  _mm256_storeu_ps(maxs, vmax);
  float a = mins[0], b = maxs[0];
  for (int i = 1; i < 8; ++i) a = std::min(a, mins[i]), b = std::max(b, maxs[i]);
  const float range = b - a;
  const float inv = range > 0.f ? 127.f / range : 0.f;
  *s = range > 0.f ? range / 127.f : 0.f;
  *lo = a;
  const __m256 va = _mm256_set1_ps(a), vinv = _mm256_set1_ps(inv);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the lane-wise packs
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + k + 8 * j), va);
      q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v, vinv));  // round to nearest
    }
    __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]),
                                        _mm256_packs_epi32(q[2], q[3]));
    bytes = _mm256_min_epu8(_mm256_permutevar8x32_epi32(bytes, order), _mm256_set1_epi8(127));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + k), bytes);
  }
  for (; k < K; ++k) u[k] = (uint8_t)std::clamp((int)std::nearbyint((x[k] - a) * inv), 0, 127);
}

// e^x for x <= 0 (softmax after subtracting the max): Cephes' polynomial, ~1e-7 relative.
inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// Two query rows at a time against 32 key columns [j, j + 32): eight independent FMA chains
// (four would wait on the FMA latency). kt: keys transposed, D x Lp.
inline void score_block(const float* qa, const float* qb, const float* kt, int64_t Lp, int64_t j,
                        int64_t D, float scale, float* sa, float* sb) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  for (int64_t d = 0; d < D; ++d) {
    const float* row = kt + d * Lp + j;
    const __m256 k0 = _mm256_loadu_ps(row), k1 = _mm256_loadu_ps(row + 8);
    const __m256 k2 = _mm256_loadu_ps(row + 16), k3 = _mm256_loadu_ps(row + 24);
    const __m256 x = _mm256_set1_ps(qa[d]), y = _mm256_set1_ps(qb[d]);
    a0 = _mm256_fmadd_ps(x, k0, a0), a1 = _mm256_fmadd_ps(x, k1, a1);
    a2 = _mm256_fmadd_ps(x, k2, a2), a3 = _mm256_fmadd_ps(x, k3, a3);
    b0 = _mm256_fmadd_ps(y, k0, b0), b1 = _mm256_fmadd_ps(y, k1, b1);
    b2 = _mm256_fmadd_ps(y, k2, b2), b3 = _mm256_fmadd_ps(y, k3, b3);
  }
  const __m256 f = _mm256_set1_ps(scale);
  _mm256_storeu_ps(sa + j, _mm256_mul_ps(a0, f)), _mm256_storeu_ps(sa + j + 8, _mm256_mul_ps(a1, f));
  _mm256_storeu_ps(sa + j + 16, _mm256_mul_ps(a2, f));
  _mm256_storeu_ps(sa + j + 24, _mm256_mul_ps(a3, f));
  _mm256_storeu_ps(sb + j, _mm256_mul_ps(b0, f)), _mm256_storeu_ps(sb + j + 8, _mm256_mul_ps(b1, f));
  _mm256_storeu_ps(sb + j + 16, _mm256_mul_ps(b2, f));
  _mm256_storeu_ps(sb + j + 24, _mm256_mul_ps(b3, f));
}

// The same for 8 key columns [j, j + 8) (the tail after the 32-column blocks), d split in two
// halves so four chains run.
inline void score_block8(const float* qa, const float* qb, const float* kt, int64_t Lp, int64_t j,
                         int64_t D, float scale, float* sa, float* sb) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
  for (int64_t d = 0; d < D; d += 2) {
    const __m256 k0 = _mm256_loadu_ps(kt + d * Lp + j), k1 = _mm256_loadu_ps(kt + (d + 1) * Lp + j);
    a0 = _mm256_fmadd_ps(_mm256_set1_ps(qa[d]), k0, a0);
    a1 = _mm256_fmadd_ps(_mm256_set1_ps(qa[d + 1]), k1, a1);
    b0 = _mm256_fmadd_ps(_mm256_set1_ps(qb[d]), k0, b0);
    b1 = _mm256_fmadd_ps(_mm256_set1_ps(qb[d + 1]), k1, b1);
  }
  const __m256 f = _mm256_set1_ps(scale);
  _mm256_storeu_ps(sa + j, _mm256_mul_ps(_mm256_add_ps(a0, a1), f));
  _mm256_storeu_ps(sb + j, _mm256_mul_ps(_mm256_add_ps(b0, b1), f));
}

// scores[0, L) -> softmax probabilities (columns [L, Lp) -> 0); returns 1 / their sum.
inline float softmax_row(float* scores, int64_t L, int64_t Lp) {
  for (int64_t j = L; j < Lp; ++j) scores[j] = -INFINITY;
  __m256 top = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < Lp; j += 8) top = _mm256_max_ps(top, _mm256_loadu_ps(scores + j));
  float tops[8];
  _mm256_storeu_ps(tops, top);
  const __m256 m = _mm256_set1_ps(*std::max_element(tops, tops + 8));
  __m256 total = _mm256_setzero_ps();
  for (int64_t j = 0; j < Lp; j += 8) {
    const __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(scores + j), m));
    _mm256_storeu_ps(scores + j, p);
    total = _mm256_add_ps(total, p);
  }
  float sums[8];
  _mm256_storeu_ps(sums, total);
  float sum = 0.f;
  for (float x : sums) sum += x;
  return 1.f / sum;
}

// out rows a and b, columns [c0, c0 + 8C) = sum_j p_j v_j, times their 1 / sum.
template <int C>
void weighted_values(const float* pa, const float* pb, const float* v, int64_t ldv, int64_t L,
                     int64_t c0, float ia, float ib, float* oa, float* ob) {
  __m256 a[C], b[C];
  for (int c = 0; c < C; ++c) a[c] = b[c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < L; ++j) {
    const __m256 x = _mm256_set1_ps(pa[j]), y = _mm256_set1_ps(pb[j]);
    for (int c = 0; c < C; ++c) {
      const __m256 vj = _mm256_loadu_ps(v + j * ldv + c0 + 8 * c);
      a[c] = _mm256_fmadd_ps(x, vj, a[c]);
      b[c] = _mm256_fmadd_ps(y, vj, b[c]);
    }
  }
  for (int c = 0; c < C; ++c) {
    _mm256_storeu_ps(oa + c0 + 8 * c, _mm256_mul_ps(a[c], _mm256_set1_ps(ia)));
    _mm256_storeu_ps(ob + c0 + 8 * c, _mm256_mul_ps(b[c], _mm256_set1_ps(ib)));
  }
}

// MR rows of codes (row stride K) against one packed block of 16 channels; writes
// y = wscale * (s * acc + lo * colsum) + bias for the block's first `ncols` channels.
template <int MR>
void tile(const uint8_t* u, int64_t K, const int8_t* bp, const float* rs, const float* rlo,
          const float* wscale, const int32_t* colsum, const float* bias, float* y, int64_t ldy,
          int ncols) {
  __m256i acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t k = 0; k < K; k += 8, bp += 128) {
    const __m256i* b = reinterpret_cast<const __m256i*>(bp);
    const __m256i b00 = _mm256_load_si256(b), b01 = _mm256_load_si256(b + 1);
    const __m256i b10 = _mm256_load_si256(b + 2), b11 = _mm256_load_si256(b + 3);
    for (int r = 0; r < MR; ++r) {
      const __m256i a0 = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(u + r * K + k));
      const __m256i a1 = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(u + r * K + k + 4));
      const __m256i t0 = _mm256_add_epi16(_mm256_maddubs_epi16(a0, b00),
                                          _mm256_maddubs_epi16(a1, b10));
      const __m256i t1 = _mm256_add_epi16(_mm256_maddubs_epi16(a0, b01),
                                          _mm256_maddubs_epi16(a1, b11));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(t0, ones));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(t1, ones));
    }
  }
  for (int c = 0; c < 2; ++c) {
    const __m256 ws = _mm256_loadu_ps(wscale + 8 * c), vb = _mm256_loadu_ps(bias + 8 * c);
    const __m256 sum = _mm256_cvtepi32_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum + 8 * c)));
    for (int r = 0; r < MR; ++r) {
      __m256 v = _mm256_fmadd_ps(_mm256_set1_ps(rs[r]), _mm256_cvtepi32_ps(acc[r][c]),
                                 _mm256_mul_ps(_mm256_set1_ps(rlo[r]), sum));
      v = _mm256_fmadd_ps(v, ws, vb);
      float* out = y + r * ldy + 8 * c;
      const int n = ncols - 8 * c;
      if (n >= 8) {
        _mm256_storeu_ps(out, v);
      } else if (n > 0) {
        float t[8];
        _mm256_storeu_ps(t, v);
        std::copy(t, t + n, out);
      }
    }
  }
}

void rows_tail(int64_t rows, const uint8_t* u, int64_t K, const int8_t* bp, const float* rs,
               const float* rlo, const float* ws, const int32_t* cs, const float* b, float* y,
               int64_t ldy, int ncols) {
  switch (rows) {
    case 3: tile<3>(u, K, bp, rs, rlo, ws, cs, b, y, ldy, ncols); break;
    case 2: tile<2>(u, K, bp, rs, rlo, ws, cs, b, y, ldy, ncols); break;
    case 1: tile<1>(u, K, bp, rs, rlo, ws, cs, b, y, ldy, ncols); break;
    default: break;
  }
}

// kt (D x Lp) = the L key rows (D floats each, ld apart) transposed, columns [L, Lp) zero; in
// 8 x 8 register blocks (a scalar loop's strided reads took a fifth of the attention time).
void transpose_keys(const float* k, int64_t ld, int64_t L, int64_t D, int64_t Lp, float* kt) {
  alignas(32) static const float zeros[8] = {};
  for (int64_t j = 0; j < Lp; j += 8) {
    for (int64_t d = 0; d < D; d += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(j + i < L ? k + (j + i) * ld + d : zeros);
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      const __m256 out[8] = {
          _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
          _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
          _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
          _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(kt + (d + i) * Lp + j, out[i]);
    }
  }
}

// One head of one text of L tokens: softmax(scale * q k^T) v. q/k/v rows ld[0..2] floats apart,
// out rows ldo apart. scratch: kt (D x Lp, keys transposed, Lp = L rounded up to 8), then two
// score rows of Lp. Query rows go in pairs (an odd last row is computed twice, written once).
void head_attention(const float* q, const float* k, const float* v, const int64_t* ld, int64_t L,
                    int64_t D, float scale, float* out, int64_t ldo, float* scratch) {
  const int64_t Lp = (L + 7) / 8 * 8;
  float *kt = scratch, *sa = scratch + D * Lp, *sb = sa + Lp;
  transpose_keys(k, ld[1], L, D, Lp, kt);
  float spare[kMaxHeadDim];  // the duplicate row's output when L is odd
  for (int64_t i = 0; i < L; i += 2) {
    const int64_t i2 = std::min(i + 1, L - 1);
    const float *qa = q + i * ld[0], *qb = q + i2 * ld[0];
    int64_t j = 0;
    for (; j + 32 <= Lp; j += 32) score_block(qa, qb, kt, Lp, j, D, scale, sa, sb);
    for (; j < Lp; j += 8) score_block8(qa, qb, kt, Lp, j, D, scale, sa, sb);
    const float ia = softmax_row(sa, L, Lp), ib = softmax_row(sb, L, Lp);
    float *oa = out + i * ldo, *ob = i2 > i ? out + i2 * ldo : spare;
    int64_t c0 = 0;
    for (; c0 + 32 <= D; c0 += 32) weighted_values<4>(sa, sb, v, ld[2], L, c0, ia, ib, oa, ob);
    switch ((D - c0) / 8) {
      case 3: weighted_values<3>(sa, sb, v, ld[2], L, c0, ia, ib, oa, ob); break;
      case 2: weighted_values<2>(sa, sb, v, ld[2], L, c0, ia, ib, oa, ob); break;
      case 1: weighted_values<1>(sa, sb, v, ld[2], L, c0, ia, ib, oa, ob); break;
      default: break;
    }
  }
}

}  // namespace

// Quantize W (N, K) per output channel to 7 bits and pack it (layout above). Outputs padded to
// ceil(N/16)*16 channels: packed (that * K bytes, 32-byte aligned), scale, colsum (sum of the
// channel's codes). Returns 1 when K is not a multiple of 8 (nothing written).
extern "C" int honed_q8_pack(const float* w, int64_t N, int64_t K, int8_t* packed, float* scale,
                             int32_t* colsum) {
  if (K % 8 != 0 || K <= 0 || N <= 0) return 1;
  const int64_t channels = (N + kBlock - 1) / kBlock * kBlock;
  for (int64_t n = 0; n < channels; ++n) {
    float amax = 0.f;
    for (int64_t k = 0; n < N && k < K; ++k) amax = std::max(amax, std::fabs(w[n * K + k]));
    const float inv = amax > 0.f ? 63.f / amax : 0.f;
    scale[n] = amax > 0.f ? amax / 63.f : 0.f;
    int32_t sum = 0;
    const int64_t block = n / kBlock, half = (n % kBlock) / 8, lane = n % 8;
    for (int64_t k = 0; k < K; ++k) {
      const int q = n < N ? std::clamp((int)std::nearbyint(w[n * K + k] * inv), -63, 63) : 0;
      sum += q;
      const int64_t at = block * kBlock * K + (k / 8) * 128 + ((k % 8) / 4) * 64 + half * 32 +
                         lane * 4 + k % 4;
      packed[at] = (int8_t)q;
    }
    colsum[n] = sum;
  }
  return 0;
}

// y (M, N) = x (M, K) W^T + bias with W packed by honed_q8_pack (scale, colsum, bias padded to
// its channel count). work: M*K bytes rounded up to 64, then 2*M floats. Returns 1 when K is
// not a multiple of 8.
extern "C" int honed_q8_linear(const float* x, int64_t M, int64_t K, const int8_t* packed,
                               const float* scale, const int32_t* colsum, const float* bias,
                               int64_t N, float* y, uint8_t* work, int threads) {
  if (K % 8 != 0 || K <= 0 || N <= 0 || M < 0) return 1;
  uint8_t* u = work;
  float* rs = reinterpret_cast<float*>(work + (M * K + 63) / 64 * 64);
  float* rlo = rs + M;
  const int64_t blocks = (N + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M; ++i) quantize_row(x + i * K, K, u + i * K, rs + i, rlo + i);
    // Row blocks of ~kRowBlockBytes of codes stay in L2 while every channel block passes over
    // them (streaming all M rows per channel block read the down projection's codes from L3).
    const int64_t step = std::max<int64_t>(kTileRows, kRowBlockBytes / K / kTileRows * kTileRows);
    for (int64_t r0 = 0; r0 < M; r0 += step) {
      const int64_t r1 = std::min(M, r0 + step);
#pragma omp for schedule(static)
      for (int64_t nb = 0; nb < blocks; ++nb) {
        const int8_t* bp = packed + nb * kBlock * K;
        const int64_t n0 = nb * kBlock;
        const int ncols = (int)std::min<int64_t>(kBlock, N - n0);
        const float *ws = scale + n0, *b = bias + n0;
        const int32_t* cs = colsum + n0;
        int64_t i = r0;
        for (; i + kTileRows <= r1; i += kTileRows)
          tile<kTileRows>(u + i * K, K, bp, rs + i, rlo + i, ws, cs, b, y + i * N + n0, N, ncols);
        rows_tail(r1 - i, u + i * K, K, bp, rs + i, rlo + i, ws, cs, b, y + i * N + n0, N, ncols);
      }
    }
  }
  return 0;
}

// Attention of n packed texts (lengths[t] tokens each, one after another): every text attends
// to its own tokens only. q/k/v: token i, head h at ptr + i * ld + h * D (ld per tensor);
// out: (T, H, D) contiguous. scratch: threads * (D + 2) * Lp floats, Lp = the longest text
// rounded up to 8. Returns 1 for a head dim that is not a multiple of 8 or above kMaxHeadDim.
extern "C" int honed_packed_attention(const float* q, const float* k, const float* v,
                                      const int64_t* ld, const int64_t* lengths, int64_t n,
                                      int64_t H, int64_t D, float scale, float* out,
                                      float* scratch, int threads) {
  if (D % 8 != 0 || D <= 0 || D > kMaxHeadDim) return 1;
  int64_t longest = 0;
  for (int64_t t = 0; t < n; ++t) longest = std::max(longest, lengths[t]);
  const int64_t Lp = (longest + 7) / 8 * 8;
  int64_t* first = new int64_t[n + 1];
  first[0] = 0;
  for (int64_t t = 0; t < n; ++t) first[t + 1] = first[t] + lengths[t];
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (int64_t job = 0; job < n * H; ++job) {
    const int64_t t = job / H, h = job % H, s = first[t];
    float* mine = scratch + omp_get_thread_num() * (D + 2) * Lp;
    head_attention(q + s * ld[0] + h * D, k + s * ld[1] + h * D, v + s * ld[2] + h * D, ld,
                   lengths[t], D, scale, out + (s * H + h) * D, H * D, mine);
  }
  delete[] first;
  return 0;
}
