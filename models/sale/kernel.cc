// SALE fast CPU kernel: int4 (held in int8 lanes) block estimation + block-sparse exact attention.
//
// Same algorithm as reference.py, organised so that work grows with the kept
// blocks: per (head, query block) task
//   1. exact attention (online softmax) over the forced blocks -> row max m, sum l
//   2. int8 dot products (AVX512-VNNI vpdpbusd when available) of the quantized
//      Q block against each candidate key block; the block is kept as soon as one
//      row passes  acc * s_bc + bias_j >= theta_i  (the logit-space RAS test with
//      the mean-centring correction folded into bias_j and theta_i)
//   3. exact attention continues over the kept blocks; normalise.
// Plain C ABI (called through ctypes): no Python or torch headers needed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define SALE_VNNI 1
#endif

namespace {

typedef float v16f __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));
constexpr int VL = 16;
constexpr int ROWS = 4;  // register blocking: rows per micro-kernel step
constexpr int INT4_MAX = 7;
constexpr int U8_OFFSET = 8;  // q + 8 is unsigned for vpdpbusd (u8 x s8)
constexpr float LOG2E = 1.44269504088896341f;

#ifdef SALE_VNNI
inline v16f splat(float x) {  // a plain broadcast (v16f{} + x costs an extra scalar add)
  __m512 r = _mm512_set1_ps(x);
  v16f out;
  std::memcpy(&out, &r, 64);
  return out;
}
// Keep a loaded vector in a register: stops GCC from re-loading it as a memory
// operand of every FMA (4x the loads in the micro-kernels below).
#define SALE_IN_REGISTER(x) asm("" : "+v"(x))
#else
inline v16f splat(float x) { return v16f{} + x; }
#define SALE_IN_REGISTER(x) (void)0
#endif
inline v16f load(const float* p) { return *reinterpret_cast<const v16f*>(p); }
inline void store(float* p, v16f x) { *reinterpret_cast<v16f*>(p) = x; }
inline v16f vmax(v16f a, v16f b) { return a > b ? a : b; }

inline float hmax(v16f x) {
#ifdef SALE_VNNI
  __m512 r;
  std::memcpy(&r, &x, 64);
  return _mm512_reduce_max_ps(r);
#else
  float m = x[0];
  for (int i = 1; i < VL; ++i) m = std::max(m, x[i]);
  return m;
#endif
}

inline float hsum(v16f x) {
#ifdef SALE_VNNI
  __m512 r;
  std::memcpy(&r, &x, 64);
  return _mm512_reduce_add_ps(r);
#endif
  float s = 0;
  for (int i = 0; i < VL; ++i) s += x[i];
  return s;
}

// 2^x to ~2e-7 relative: 2^n * 2^f with a degree-6 polynomial for 2^f, f in [-.5, .5].
// The exact pass works in log2 units (Q pre-scaled by log2(e)/sqrt(D)), so no extra multiply.
inline v16f vexp2(v16f t) {
  const v16f tc = t > -126.f ? t : splat(-126.f);
  v16f n = (tc + 12582912.f) - 12582912.f;  // round to nearest integer
  v16f f = tc - n;
  v16f p = splat(1.5403530393381610e-4f);
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  v16i e = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16f r = p * reinterpret_cast<v16f&>(e);
  return t < -125.f ? splat(0.f) : r;  // 2^-inf and underflow -> exactly 0
}

void* aligned_alloc64(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, std::max<size_t>(bytes, 64)) != 0) return nullptr;
  return p;
}

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t bytes) : p(aligned_alloc64(bytes)) { if (p) std::memset(p, 0, bytes); }
  ~Buf() { std::free(p); }
  template <class T> T* as() const { return static_cast<T*>(p); }
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Shape {
  int BH, H, T, D, bq, bk, sink, window, nq, nk, Tq, Tk;  // Tq/Tk: padded lengths
  float scale;
};

// Per-(head) prepared tensors, all padded to whole blocks.
struct Prepared {
  float* kt;        // [BH][nk][D][bk]  K blocks transposed (exact pass)
  int8_t* kpack;    // [BH][nk][D/4][bk][4]  int4 K values for vpdpbusd
  uint8_t* qu8;     // [BH][Tq][D]  int4 Q values + 8
  float* sq;        // [BH][nq]  Q block scales
  float* sk;        // [BH][nk]  K block scales
  float* ksum;      // [BH][Tk]  sum_d kint (removes the +8 offset of Q)
  float* col;       // [BH][Tk]  qbar.k_j - qbar.kbar  (correction, per key)
  float* row;       // [BH][Tq]  q_i.kbar  (correction, per row)
};

inline int quant(float x, float inv) {
  float r = std::nearbyint(x * inv);  // round half even, like torch.round / ONNX
  return (int)std::min<float>(std::max<float>(r, -INT4_MAX), INT4_MAX);
}

void prepare_head(const Shape& s, int bh, const float* q, const float* k, const Prepared& P,
                  double* means /*scratch 2D*/) {
  const int T = s.T, D = s.D;
  const float* qh = q + (size_t)bh * T * D;
  const float* kh = k + (size_t)bh * T * D;
  double* qm = means;
  double* km = means + D;
  std::fill(means, means + 2 * D, 0.0);
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < D; ++d) { qm[d] += qh[(size_t)t * D + d]; km[d] += kh[(size_t)t * D + d]; }
  std::vector<float> qbar(D), kbar(D);
  for (int d = 0; d < D; ++d) { qbar[d] = (float)(qm[d] / T); kbar[d] = (float)(km[d] / T); }
  float qbar_kbar = 0;
  for (int d = 0; d < D; ++d) qbar_kbar += qbar[d] * kbar[d];
  std::vector<float> centred((size_t)std::max(s.bq, s.bk) * D);

  // Key blocks: transposed floats, centred int4 values, per-key correction terms.
  for (int c = 0; c < s.nk; ++c) {
    const int k0 = c * s.bk, n = std::min(s.bk, T - k0);
    float amax = 0;
    for (int j = 0; j < n; ++j)
      for (int d = 0; d < D; ++d) {
        float x = kh[(size_t)(k0 + j) * D + d] - kbar[d];
        centred[(size_t)j * D + d] = x;
        amax = std::max(amax, std::fabs(x));
      }
    float sc = amax > 0 ? amax / INT4_MAX : 1.f;
    P.sk[(size_t)bh * s.nk + c] = sc;
    float inv = 1.f / sc;
    float* kt = P.kt + (((size_t)bh * s.nk + c) * D) * s.bk;
    int8_t* kp = P.kpack + (((size_t)bh * s.nk + c) * D) * s.bk;
    for (int j = 0; j < n; ++j) {
      const float* kr = kh + (size_t)(k0 + j) * D;
      int sum = 0;
      float dotq = 0;
      for (int d = 0; d < D; ++d) {
        kt[(size_t)d * s.bk + j] = kr[d];
        // exact division like the reference (x / scale), not x * (1/scale)
        float r = std::nearbyint(centred[(size_t)j * D + d] / sc);
        int v = (int)std::min<float>(std::max<float>(r, -INT4_MAX), INT4_MAX);
        kp[((size_t)(d / 4) * s.bk + j) * 4 + (d % 4)] = (int8_t)v;
        sum += v;
        dotq += qbar[d] * kr[d];
      }
      P.ksum[(size_t)bh * s.Tk + k0 + j] = (float)sum;
      P.col[(size_t)bh * s.Tk + k0 + j] = dotq - qbar_kbar;
    }
    (void)inv;
  }
  // Query blocks: centred int4 values (+8 offset), per-row correction term.
  for (int b = 0; b < s.nq; ++b) {
    const int r0 = b * s.bq, n = std::min(s.bq, T - r0);
    float amax = 0;
    for (int i = 0; i < n; ++i)
      for (int d = 0; d < D; ++d) {
        float x = qh[(size_t)(r0 + i) * D + d] - qbar[d];
        centred[(size_t)i * D + d] = x;
        amax = std::max(amax, std::fabs(x));
      }
    float sc = amax > 0 ? amax / INT4_MAX : 1.f;
    P.sq[(size_t)bh * s.nq + b] = sc;
    uint8_t* qu = P.qu8 + ((size_t)bh * s.Tq + r0) * D;
    for (int i = 0; i < n; ++i) {
      float dotk = 0;
      for (int d = 0; d < D; ++d) {
        float r = std::nearbyint(centred[(size_t)i * D + d] / sc);
        int v = (int)std::min<float>(std::max<float>(r, -INT4_MAX), INT4_MAX);
        qu[(size_t)i * D + d] = (uint8_t)(v + U8_OFFSET);
        dotk += qh[(size_t)(r0 + i) * D + d] * kbar[d];
      }
      P.row[(size_t)bh * s.Tq + r0 + i] = dotk;
    }
  }
}

// Per-thread scratch for one query block.
struct Scratch {
  std::vector<float> qblk, S, O, m, l, alpha, theta;
  std::vector<int> kept;
  Scratch(const Shape& s)
      : qblk((size_t)s.bq * s.D + (size_t)ROWS * s.D), S((size_t)(s.bq + ROWS) * s.bk),
        O((size_t)(s.bq + ROWS) * s.D), m(s.bq + ROWS), l(s.bq + ROWS), alpha(s.bq + ROWS),
        theta(s.bq + ROWS), kept(s.nk) {}
};

// S[r][j] = sum_d Q[r][d] * Kt[d][j] for ROWS rows and JV*16 columns starting at j0.
template <int JV>
inline void qk_micro(const float* Q, int D, const float* kt, int bk, int j0, float* S) {
  v16f acc[ROWS][JV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < JV; ++v) acc[r][v] = splat(0.f);
  for (int d = 0; d < D; ++d) {
    v16f kv[JV];
    for (int v = 0; v < JV; ++v) {
      kv[v] = load(kt + (size_t)d * bk + j0 + v * VL);
      SALE_IN_REGISTER(kv[v]);
    }
    for (int r = 0; r < ROWS; ++r) {
      v16f qv = splat(Q[(size_t)r * D + d]);
      for (int v = 0; v < JV; ++v) acc[r][v] += qv * kv[v];
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < JV; ++v) store(S + (size_t)r * bk + j0 + v * VL, acc[r][v]);
}

// O[r][d0:] = O[r][d0:] * alpha[r] + sum_j P[r][j] * V[j][d0:], ROWS rows, DV*16 dims.
template <int DV>
inline void pv_micro(const float* P, int bk, int nkeys, const float* V, int D, int d0,
                     const float* alpha, float* O) {
  v16f acc[ROWS][DV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < DV; ++v) acc[r][v] = load(O + (size_t)r * D + d0 + v * VL) * alpha[r];
  for (int j = 0; j < nkeys; ++j) {
    v16f vv[DV];
    for (int v = 0; v < DV; ++v) {
      vv[v] = load(V + (size_t)j * D + d0 + v * VL);
      SALE_IN_REGISTER(vv[v]);
    }
    for (int r = 0; r < ROWS; ++r) {
      v16f pv = splat(P[(size_t)r * bk + j]);
      for (int v = 0; v < DV; ++v) acc[r][v] += pv * vv[v];
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < DV; ++v) store(O + (size_t)r * D + d0 + v * VL, acc[r][v]);
}

// One exact tile: query block (rows r0.., n rows) x key block c, online softmax update.
void exact_tile(const Shape& s, int bh, int r0, int n, int c, const float* v, const Prepared& P,
                Scratch& w) {
  const int D = s.D, bk = s.bk, k0 = c * bk;
  const int nkeys = std::min(bk, s.T - k0);
  const int nrows = (n + ROWS - 1) / ROWS * ROWS;
  const float* kt = P.kt + (((size_t)bh * s.nk + c) * D) * bk;
  float* S = w.S.data();
  for (int r = 0; r < nrows; r += ROWS) {
    int j = 0;
    for (; j + 4 * VL <= bk; j += 4 * VL) qk_micro<4>(w.qblk.data() + (size_t)r * D, D, kt, bk, j, S + (size_t)r * bk);
    for (; j < bk; j += VL) qk_micro<1>(w.qblk.data() + (size_t)r * D, D, kt, bk, j, S + (size_t)r * bk);
  }
  const bool masked = k0 + bk - 1 > r0 || nkeys < bk;  // tile touches the diagonal or the end
  for (int i = 0; i < nrows; ++i) {
    float* srow = S + (size_t)i * bk;
    int valid = i < n ? std::min(nkeys, r0 + i - k0 + 1) : 0;  // causal: keys k0+j <= r0+i
    if (valid <= 0) {
      for (int j = 0; j < bk; ++j) srow[j] = 0.f;
      w.alpha[i] = 1.f;
      continue;
    }
    if (masked)
      for (int j = valid; j < bk; ++j) srow[j] = -INFINITY;
    v16f mx = splat(-INFINITY);
    for (int j = 0; j < bk; j += VL) mx = vmax(mx, load(srow + j));
    float m_new = std::max(w.m[i], hmax(mx));  // m, l in log2 units (see vexp2)
    float a = std::exp2(w.m[i] - m_new);        // 2^-inf = 0 on the first tile
    v16f sum = splat(0.f);
    for (int j = 0; j < bk; j += VL) {
      v16f p = vexp2(load(srow + j) - m_new);
      store(srow + j, p);
      sum += p;
    }
    w.l[i] = w.l[i] * a + hsum(sum);
    w.m[i] = m_new;
    w.alpha[i] = a;
  }
  const float* vh = v + ((size_t)bh * s.T + k0) * D;
  for (int r = 0; r < nrows; r += ROWS) {
    int d = 0;
    for (; d + 4 * VL <= D; d += 4 * VL)
      pv_micro<4>(S + (size_t)r * bk, bk, nkeys, vh, D, d, w.alpha.data() + r, w.O.data() + (size_t)r * D);
    for (; d < D; d += VL)
      pv_micro<1>(S + (size_t)r * bk, bk, nkeys, vh, D, d, w.alpha.data() + r, w.O.data() + (size_t)r * D);
  }
}

#ifdef SALE_VNNI
// int8 scores of `rows` (<= ROWS) quantized query rows against JV*16 keys from j0
// (vpdpbusd: u8 x s8 -> i32), then the RAS test; true as soon as one pair passes.
template <int JV>
inline bool est_micro(const uint8_t* qu, int rows, int D, const int8_t* kp, int bk, int j0, float s_bc,
                      const float* bias, const float* theta) {
  __m512i acc[ROWS][JV];
  for (int i = 0; i < ROWS; ++i)
    for (int v = 0; v < JV; ++v) acc[i][v] = _mm512_setzero_si512();
  const uint8_t* qrow[ROWS];
  for (int i = 0; i < ROWS; ++i) qrow[i] = qu + (size_t)std::min(i, rows - 1) * D;
  for (int d4 = 0; d4 < D / 4; ++d4) {
    __m512i kv[JV];
    for (int v = 0; v < JV; ++v) kv[v] = _mm512_loadu_si512(kp + ((size_t)d4 * bk + j0 + v * VL) * 4);
    for (int i = 0; i < ROWS; ++i) {
      int32_t q4;
      std::memcpy(&q4, qrow[i] + 4 * d4, 4);
      const __m512i qv = _mm512_set1_epi32(q4);
      for (int v = 0; v < JV; ++v) acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], qv, kv[v]);
    }
  }
  const __m512 sbc = _mm512_set1_ps(s_bc);
  __mmask16 any = 0;
  for (int i = 0; i < ROWS; ++i) {
    if (i >= rows) break;
    const __m512 th = _mm512_set1_ps(theta[i]);
    for (int v = 0; v < JV; ++v) {
      __m512 e = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][v]), sbc, _mm512_loadu_ps(bias + j0 + v * VL));
      any |= _mm512_cmp_ps_mask(e, th, _CMP_GE_OQ);
    }
  }
  return any != 0;
}
#endif

// Does any row of the query block pass the RAS test against key block c?
bool estimate_tile(const Shape& s, int bh, int b, int n, int c, const Prepared& P, const Scratch& w) {
  const int D = s.D, bk = s.bk, k0 = c * bk, r0 = b * s.bq;
  const float s_bc = P.sq[(size_t)bh * s.nq + b] * P.sk[(size_t)bh * s.nk + c];
  // acc' = sum (q+8) k = acc + 8 * ksum_j;  estimate/scale = acc * s_bc + col_j + row_i
  float bias[256];
  const float* ksum = P.ksum + (size_t)bh * s.Tk + k0;
  const float* col = P.col + (size_t)bh * s.Tk + k0;
  for (int j = 0; j < bk; ++j) bias[j] = col[j] - U8_OFFSET * ksum[j] * s_bc;
  const uint8_t* qu = P.qu8 + ((size_t)bh * s.Tq + r0) * D;
  const int8_t* kp = P.kpack + (((size_t)bh * s.nk + c) * D) * bk;
  const int D4 = D / 4;
  for (int r = 0; r < n; r += ROWS) {
    const int rows = std::min(ROWS, n - r);
#ifdef SALE_VNNI
    int j0 = 0;
    for (; j0 + 4 * VL <= bk; j0 += 4 * VL)
      if (est_micro<4>(qu + (size_t)r * D, rows, D, kp, bk, j0, s_bc, bias, w.theta.data() + r)) return true;
    for (; j0 < bk; j0 += VL)
      if (est_micro<1>(qu + (size_t)r * D, rows, D, kp, bk, j0, s_bc, bias, w.theta.data() + r)) return true;
#else
    for (int i = 0; i < rows; ++i) {
      const uint8_t* qr = qu + (size_t)(r + i) * D;
      for (int j = 0; j < bk; ++j) {
        int acc = 0;
        for (int d = 0; d < D; ++d) acc += (int)qr[d] * (int)kp[((size_t)(d / 4) * bk + j) * 4 + (d % 4)];
        if ((float)acc * s_bc + bias[j] >= w.theta[r + i]) return true;
      }
    }
#endif
  }
  return false;
}

}  // namespace

extern "C" {

int sale_has_vnni() {
#ifdef SALE_VNNI
  return 1;
#else
  return 0;
#endif
}

// q, k, v, out: [BH, T, D] float32 contiguous; taus: [H] (head = bh % H; 0 = dense head).
// kept: [BH] kept-block counts (or null); keep_mask: [BH, nq, nk] bytes (or null);
// timings: [3] seconds: prepare (wall), estimate, exact (thread-seconds / threads).
int sale_forward(const float* q, const float* k, const float* v, float* out, int BH, int H, int T,
                 int D, int bq, int bk, int sink, int window, const float* taus, int nthreads,
                 int64_t* kept, uint8_t* keep_mask, double* timings) {
  if (D % VL != 0 || bk % VL != 0 || bk > 256 || bq < 1 || T < 1 || BH < 1 || H < 1) return -1;
  Shape s{BH, H, T, D, bq, bk, sink, window, (T + bq - 1) / bq, (T + bk - 1) / bk, 0, 0,
          1.0f / std::sqrt((float)D)};
  s.Tq = s.nq * bq;
  s.Tk = s.nk * bk;
  if (nthreads < 1) nthreads = 1;
  Buf kt((size_t)BH * s.Tk * D * 4), kpack((size_t)BH * s.Tk * D), qu8((size_t)BH * s.Tq * D);
  Buf sq((size_t)BH * s.nq * 4), sk((size_t)BH * s.nk * 4), ksum((size_t)BH * s.Tk * 4),
      col((size_t)BH * s.Tk * 4), row((size_t)BH * s.Tq * 4);
  if (!kt.p || !kpack.p || !qu8.p) return -2;
  Prepared P{kt.as<float>(), kpack.as<int8_t>(), qu8.as<uint8_t>(), sq.as<float>(), sk.as<float>(),
             ksum.as<float>(), col.as<float>(), row.as<float>()};
  double t0 = now();
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
  for (int bh = 0; bh < BH; ++bh) {
    std::vector<double> means(2 * D);
    prepare_head(s, bh, q, k, P, means.data());
  }
  double t1 = now();
  double est_time = 0, exact_time = 0;
  const int tasks = BH * s.nq;
#pragma omp parallel num_threads(nthreads) reduction(+ : est_time, exact_time)
  {
    Scratch w(s);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < tasks; ++t) {
      const int b = s.nq - 1 - t / BH, bh = t % BH;  // longest rows first: better balance
      const int r0 = b * bq, n = std::min(bq, T - r0);
      const float tau = taus[bh % H];
      double ta = now();
      std::fill(w.qblk.begin(), w.qblk.end(), 0.f);
      {  // Q pre-scaled so that scores come out in log2 units: s * log2(e) / sqrt(D)
        const float* qs = q + ((size_t)bh * T + r0) * D;
        const float f = s.scale * LOG2E;
        for (size_t x = 0; x < (size_t)n * D; ++x) w.qblk[x] = qs[x] * f;
      }
      std::fill(w.O.begin(), w.O.end(), 0.f);
      std::fill(w.m.begin(), w.m.end(), -INFINITY);
      std::fill(w.l.begin(), w.l.end(), 0.f);
      const int last_c = (r0 + n - 1) / bk;   // causal: key blocks 0..last_c
      const int local_lo = r0 / bk - window;  // local window start
      auto forced = [&](int c) { return c < sink || c >= local_lo; };
      for (int c = 0; c <= last_c; ++c)
        if (forced(c)) exact_tile(s, bh, r0, n, c, v, P, w);
      double tb = now();
      int nkept = 0;
      const bool dense = !(tau > 0.f);
      if (!dense)
        for (int i = 0; i < n; ++i)  // theta_i in raw-dot units, row correction moved across
          w.theta[i] = (w.m[i] / LOG2E + std::log(tau * w.l[i])) / s.scale - P.row[(size_t)bh * s.Tq + r0 + i];
      for (int c = 0; c <= last_c; ++c)
        if (!forced(c) && (dense || estimate_tile(s, bh, b, n, c, P, w))) w.kept[nkept++] = c;
      double tc = now();
      for (int x = 0; x < nkept; ++x) exact_tile(s, bh, r0, n, w.kept[x], v, P, w);
      float* o = out + ((size_t)bh * T + r0) * D;
      for (int i = 0; i < n; ++i) {
        float inv = 1.f / w.l[i];
        for (int d = 0; d < D; ++d) o[(size_t)i * D + d] = w.O[(size_t)i * D + d] * inv;
      }
      int total = nkept;
      for (int c = 0; c <= last_c; ++c) total += forced(c);
      if (keep_mask) {
        uint8_t* km = keep_mask + ((size_t)bh * s.nq + b) * s.nk;
        for (int c = 0; c < s.nk; ++c) km[c] = c <= last_c && forced(c);
        for (int x = 0; x < nkept; ++x) km[w.kept[x]] = 1;
      }
      if (kept) {
#pragma omp atomic
        kept[bh] += total;
      }
      double td = now();
      est_time += tc - tb;
      exact_time += (tb - ta) + (td - tc);
    }
  }
  if (timings) {
    timings[0] = t1 - t0;
    timings[1] = est_time / nthreads;
    timings[2] = exact_time / nthreads;
  }
  return 0;
}

}  // extern "C"
