// Fused AdamHD step on CPU: one pass over p, g, m, v (and max_v for amsgrad) for a whole list of
// tensors, registered as the custom op adamhd::fused_step_ (torch.compile sees one opaque op).
//
// The math is the one of adamhd.functional/_single_tensor_adamhd and adamhd.decay, in the same
// order of operations, computed in float (double for float64 tensors) and rounded once on store:
//
//   GradScaler:      g = g / grad_scale, written back to the gradient (as torch's fused AdamW)
//   moments:         m = lerp(m, g, 1 - beta1);  v = v*beta2 + (1 - beta2)*g*g
//   explicit decay:  p = p*(1 - tau) + tau*(p - clip(p, -d, d))          (on p_t)
//   update:          adam     p = p + (-step_size) * m / (sqrt(v)/bc2_sqrt + eps)
//                    atan2    p = p - lr * a*atan2(m/bc1, b*sqrt(v)/bc2_sqrt)
//                    softplus p = p - lr * (m/bc1) / softplus_beta(sqrt(v)/bc2_sqrt)
//   proximal decay:  x = p/(1 + tau);  p = x + tau*(x - clip(x, -d, d))  (after it)
//   cautious:        either decay only where sign(m)*sign(p_t) >= 0, else p keeps its value
//
// Work is cut into chunks of kChunk elements (a tensor's last chunk is shorter; a small tensor is
// one chunk) and the chunks of all tensors are shared by the threads of ONE parallel region, taken
// dynamically: no per-tensor thread start-up or barrier, and a thread the OS deschedules does not
// hold the others up. While it writes the new p, the kernel accumulates sum|p_new| per chunk (in
// double), summed per tensor in chunk order, so the result does not depend on the thread count.
// That sum is kept in a side table (below) as the next step's mean|p| for the adaptive threshold.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/OpMathType.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace {

using at::vec::Vectorized;

// ---- elementwise helpers, for scalars and vectors alike (NaN-propagating like torch) ----------

template <typename T>
inline T vsqrt(const T& x) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::sqrt(x);
  } else {
    return x.sqrt();
  }
}

template <typename T>
inline T vabs(const T& x) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::abs(x);
  } else {
    return x.abs();
  }
}

template <typename T>
inline T vmaximum(const T& a, const T& b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(a) || std::isnan(b)) return a + b;
    return a > b ? a : b;
  } else {
    return at::vec::maximum(a, b);
  }
}

template <typename T>
inline T vminimum(const T& a, const T& b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(a) || std::isnan(b)) return a + b;
    return a < b ? a : b;
  } else {
    return at::vec::minimum(a, b);
  }
}

// x - clip(x, -d, d): zero where |x| <= d.
template <typename T>
inline T excess(const T& x, const T& neg_d, const T& d) {
  return x - vminimum(vmaximum(x, neg_d), d);
}

// Per-tensor constants, broadcast to the compute type T (a scalar or a vector).
template <typename T>
struct Consts {
  T weight1;        // 1 - beta1 (lerp weight)
  T beta2;
  T one_minus_beta2;
  T neg_step_size;  // -lr / (1 - beta1**t)
  T bc2_sqrt;       // sqrt(1 - beta2**t)
  T eps;
  T tau;            // lr * weight_decay
  T one_minus_tau;
  T one_plus_tau;
  T d;
  T neg_d;
  T grad_scale;
  T neg_lr;         // -lr (atan2 and softplus updates)
  T bc1;            // 1 - beta1**t
  T update_a;       // atan2: a; softplus: beta
  T update_b;       // atan2: b; softplus: beta * x above which softplus(x) = x (torch's 20)
  T inv_bc1;        // 1/bc1, 1/bc2_sqrt, 1/update_a: the atan2 and softplus updates multiply
  T inv_bc2_sqrt;
  T inv_update_a;
};

template <typename T, typename S>
Consts<T> broadcast(const Consts<S>& c) {
  return Consts<T>{T(c.weight1),   T(c.beta2),         T(c.one_minus_beta2), T(c.neg_step_size),
                   T(c.bc2_sqrt),  T(c.eps),           T(c.tau),             T(c.one_minus_tau),
                   T(c.one_plus_tau), T(c.d),          T(c.neg_d),           T(c.grad_scale),
                   T(c.neg_lr),    T(c.bc1),           T(c.update_a),        T(c.update_b),
                   T(c.inv_bc1),   T(c.inv_bc2_sqrt),  T(c.inv_update_a)};
}

enum Update : int64_t { kAdam = 0, kAtan2 = 1, kSoftplus = 2 };

struct Flags {
  bool lerp_low;  // weight1 < 0.5: torch.lerp's "start + w*(end - start)" branch
  bool maximize;
  bool scaled;    // divide g by grad_scale (and store the result back into the gradient)
  int64_t update; // Update
  bool cautious;  // decay only where sign(u) * sign(p_t) >= 0
};

// u * p >= 0 from the signs (no underflow), false where either is NaN (as sign(NaN) >= 0 is).
template <typename T>
inline auto same_sign_or_zero(const T& u, const T& p) {
  if constexpr (std::is_floating_point_v<T>) {
    return (u >= T(0) && p >= T(0)) || (u <= T(0) && p <= T(0));
  } else {
    const T zero(0);
    return ((u >= zero) & (p >= zero)) | ((u <= zero) & (p <= zero));
  }
}

template <typename T, typename M>
inline T select(const M& mask, const T& yes, const T& no) {
  if constexpr (std::is_floating_point_v<T>) {
    return mask ? yes : no;
  } else {
    return T::blendv(no, yes, mask);
  }
}

// atan2(y, x) for x >= 0. Float vectors: Cephes' atanf (range reduction to |r| <= tan(pi/8), a
// degree-9 odd polynomial; about 1e-7 relative), inline: a library call per vector cost 3x the
// whole memory-bound step. Otherwise the library function.
template <typename T>
inline T atan2_nonneg_x(const T& y, const T& x) {
  if constexpr (std::is_same_v<T, Vectorized<float>>) {
    const T zero(0.f);
    // r = |y|/x reduced to -1/r, (r - 1)/(r + 1) or r, with one division
    const T ay = y.abs();
    const T big = ay > x * T(2.414213562373095f);
    const T mid = ay > x * T(0.4142135623730950f);
    const T num = T::blendv(T::blendv(ay, ay - x, mid), zero - x, big);
    const T den = T::blendv(T::blendv(x, ay + x, mid), ay, big);
    const T xr = num / den;
    const T base =
        T::blendv(T::blendv(zero, T(0.7853981633974483f), mid), T(1.5707963267948966f), big);
    const T z = xr * xr;
    using at::vec::fmadd;
    const T poly = fmadd(fmadd(fmadd(T(8.05374449538e-2f), z, T(-1.38776856032e-1f)), z,
                               T(1.99777106478e-1f)),
                         z, T(-3.33329491539e-1f));
    T a = base + fmadd(poly * z, xr, xr);
    a = T::blendv(a, zero, y == zero);
    return T::blendv(a, zero - a, y < zero);
  } else if constexpr (std::is_floating_point_v<T>) {
    return std::atan2(y, x);
  } else {
    return y.atan2(x);
  }
}

// log1p(w) for float vectors with 0 <= w <= 1: Cephes' logf polynomial on 1 + w (written as
// x = w, or x = (w - 1)/2 and one ln 2 where 1 + w > sqrt 2; about 1e-7 relative), inline.
inline Vectorized<float> log1p_unit(const Vectorized<float>& w) {
  using V = Vectorized<float>;
  const V one(1.f), half(0.5f);
  const V e = V::blendv(V(0.f), one, w > V(0.41421356237309503f));
  const V x = V::blendv(w, (w - one) * half, e == one);
  const V z = x * x;
  V y(7.0376836292e-2f);
  for (float c : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
                  -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f}) {
    y = at::vec::fmadd(y, x, V(c));
  }
  y = at::vec::fmadd(y * x, z, at::vec::fmadd(e, V(-2.12194440e-4f), V(0.f) - half * z));
  return x + at::vec::fmadd(e, V(0.693359375f), y);
}

#if defined(CPU_CAPABILITY_AVX512)
// log1p(exp(-y)) for float vectors with y >= 0, without exp or log (issue 20): on [0, 16), 16
// unit intervals, on interval k a degree-6 polynomial in t = y - k - 1/2 (Chebyshev interpolation
// at 7 nodes, in float64, coefficients rounded to float; kSoftplusPoly[d][k] is the coefficient
// of t^d), picked by one in-register permute per coefficient. Absolute error at most 6.1e-8
// (float32 evaluation on a grid of 2e6 points); at y >= 16 the value, below 1.2e-7, is taken as
// 0. The softplus made of it, (y + this)/beta, is within 1.2e-7 relative of the exact one
// (tests/kernels/test_fused_update_options.py measures the bound on the op).
alignas(64) constexpr float kSoftplusPoly[7][16] = {
    {0.474076986f, 0.201413274f, 0.078889735f, 0.0297504179f,
     0.0110477451f, 0.00407844316f, 0.00150231016f, 0.000552931451f,
     0.000203447678f, 7.48490274e-05f, 2.75360708e-05f, 1.0130042e-05f,
     3.72664613e-06f, 1.3709581e-06f, 5.04347554e-07f, 1.85539122e-07f},
    {-0.377540797f, -0.182425529f, -0.0758581534f, -0.0293122269f,
     -0.0109869437f, -0.00407013856f, -0.00150118268f, -0.000552778831f,
     -0.000203427044f, -7.48462553e-05f, -2.75356997e-05f, -1.01299947e-05f,
     -3.72664044e-06f, -1.37095765e-06f, -5.04347554e-07f, -1.85539164e-07f},
    {0.117501847f, 0.0745732412f, 0.0350518562f, 0.0142265102f,
     0.00543311471f, 0.00202678586f, 0.00074946438f, 0.000276236562f,
     0.000101692807f, 3.74203155e-05f, 1.37674679e-05f, 5.06494462e-06f,
     1.86331283e-06f, 6.85477744e-07f, 2.52173606e-07f, 9.27695396e-08f},
    {-0.00958870631f, -0.015788259f, -0.00991222914f, -0.00446428824f,
     -0.00177119847f, -0.000670062436f, -0.000249056582f, -9.19712256e-05f,
     -3.38816171e-05f, -1.24707576e-05f, -4.58860268e-06f, -1.68817007e-06f,
     -6.21058973e-07f, -2.28476964e-07f, -8.40522674e-08f, -3.0921143e-08f},
    {-0.00401446922f, 0.000652696006f, 0.00169247657f, 0.0009832012f,
     0.000423243619f, 0.000164788144f, 6.18920094e-05f, 2.29427042e-05f,
     8.46378862e-06f, 3.11685812e-06f, 1.14706199e-06f, 4.2203925e-07f,
     1.55267514e-07f, 5.71208005e-08f, 2.10137134e-08f, 7.73053266e-09f},
    {0.00083996536f, 0.000622660329f, -7.1283037e-05f, -0.000146004459f,
     -7.73696447e-05f, -3.21412881e-05f, -1.23480841e-05f, -4.61486479e-06f,
     -1.70756107e-06f, -6.2951267e-07f, -2.31765753e-07f, -8.52863593e-08f,
     -3.13784163e-08f, -1.15439223e-08f, -4.24683266e-09f, -1.5623306e-09f},
    {0.00018519639f, -0.000162164724f, -5.09607089e-05f, 9.20830371e-06f,
     1.03640477e-05f, 4.9790151e-06f, 2.00205955e-06f, 7.60229568e-07f,
     2.82915181e-07f, 1.04519145e-07f, 3.85101373e-08f, 1.41751704e-08f,
     5.21584775e-09f, 1.91895122e-09f, 7.05962788e-10f, 2.59711891e-10f},
};

inline Vectorized<float> log1p_exp_neg(const Vectorized<float>& y) {
  const __m512 yc = _mm512_min_ps(y, _mm512_set1_ps(15.999999f));
  const __m512i k = _mm512_cvttps_epi32(yc);
  const __m512 t = _mm512_sub_ps(yc, _mm512_add_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(0.5f)));
  __m512 acc = _mm512_permutexvar_ps(k, _mm512_load_ps(kSoftplusPoly[6]));
  for (int d = 5; d >= 0; --d) {
    acc = _mm512_fmadd_ps(acc, t, _mm512_permutexvar_ps(k, _mm512_load_ps(kSoftplusPoly[d])));
  }
  const __mmask16 far = _mm512_cmp_ps_mask(y, _mm512_set1_ps(16.f), _CMP_GE_OQ);
  return _mm512_mask_blend_ps(far, acc, _mm512_setzero_ps());
}
#endif

// torch.nn.functional.softplus(x, beta, threshold) for x >= 0: x where beta*x > threshold, else
// log1p(exp(beta*x))/beta = (beta*x + log1p(exp(-beta*x)))/beta. Float vectors: inline, with the
// table above on AVX512 (else torch's 20-ulp exp and log1p_unit); a library call per vector cost
// 3x the whole memory-bound step.
template <typename T>
inline T vsoftplus(const T& x, const T& beta, const T& inv_beta, const T& threshold) {
  const T bx = x * beta;
  if constexpr (std::is_floating_point_v<T>) {
    return bx > threshold ? x : std::log1p(std::exp(bx)) / beta;
  } else if constexpr (std::is_same_v<T, Vectorized<float>>) {
    const T small = vminimum(bx, threshold);
#if defined(CPU_CAPABILITY_AVX512)
    return select(bx > threshold, x, (small + log1p_exp_neg(small)) * inv_beta);
#else
    return select(bx > threshold, x, (small + log1p_unit((T(0.f) - small).exp_u20())) * inv_beta);
#endif
  } else {
    return select(bx > threshold, x, vminimum(bx, threshold).exp().log1p() / beta);
  }
}

// as torch.lerp(m, x, w): fmadd(w, x - m, m) for small w (lerp_low), else fmadd(w - 1, x - m, x)
template <typename T>
inline T torch_lerp(const T& m, const T& x, const T& w, bool lerp_low) {
  if constexpr (std::is_floating_point_v<T>) {
    return lerp_low ? std::fma(w, x - m, m) : std::fma(w - T(1), x - m, x);
  } else {
    return lerp_low ? at::vec::fmadd(w, x - m, m) : at::vec::fmadd(w - T(1), x - m, x);
  }
}

// The decays of adamhd.decay: explicit on p_t, proximal on q = p after the update.
template <typename T>
inline T explicit_decayed(const T& p, const Consts<T>& c) {
  return p * c.one_minus_tau + excess(p, c.neg_d, c.d) * c.tau;
}

template <typename T>
inline T proximal_decayed(const T& q, const Consts<T>& c) {
  const T x = q / c.one_plus_tau;
  return x + excess(x, c.neg_d, c.d) * c.tau;
}

// The step p += -lr * u for the update rule, given m and the second moment (v or max_v).
template <typename T>
inline T add_update(const T& p, const T& m, const T& second, const Consts<T>& c, const Flags& f) {
  if (f.update == kAtan2) {
    const T sqrt_v_hat = vsqrt(second) * c.inv_bc2_sqrt;
    return p + c.neg_lr * (c.update_a * atan2_nonneg_x(m * c.inv_bc1, c.update_b * sqrt_v_hat));
  }
  if (f.update == kSoftplus) {
    const T sqrt_v_hat = vsqrt(second) * c.inv_bc2_sqrt;
    const T softplus = vsoftplus(sqrt_v_hat, c.update_a, c.inv_update_a, c.update_b);
    return p + c.neg_lr * ((m * c.inv_bc1) / softplus);
  }
  const T denom = vsqrt(second) / c.bc2_sqrt + c.eps;
  return p + c.neg_step_size * m / denom;  // as torch.addcdiv: self + (value * t1) / t2
}

// One element (or one vector of elements) with the gradient already unscaled: returns the new p;
// updates m, v, max_v in place. DECAY: 0 none, 1 explicit, 2 proximal. PLAIN: Adam's update
// without cautious decay, decided at compile time (the options' branches and constants out of the
// hot loop). The explicit decay only reads p_t, so it can follow the moments (the cautious mask
// needs the new m).
template <int DECAY, bool AMSGRAD, bool PLAIN, typename T>
inline T adamhd_update(T p, T g, T& m, T& v, T& max_v, const Consts<T>& c, const Flags& f) {
  if (f.maximize) g = T(0) - g;
  m = torch_lerp(m, g, c.weight1, f.lerp_low);
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  if constexpr (AMSGRAD) max_v = vmaximum(max_v, v);
  const T& second = AMSGRAD ? max_v : v;
  const T p_t = p;
  if constexpr (DECAY == 1) {
    const T decayed = explicit_decayed(p, c);
    p = (!PLAIN && f.cautious) ? select(same_sign_or_zero(m, p_t), decayed, p) : decayed;
  }
  if constexpr (PLAIN) {
    p = p + c.neg_step_size * m / (vsqrt(second) / c.bc2_sqrt + c.eps);
  } else {
    p = add_update(p, m, second, c, f);
  }
  if constexpr (DECAY == 2) {
    const T decayed = proximal_decayed(p, c);
    p = (!PLAIN && f.cautious) ? select(same_sign_or_zero(m, p_t), decayed, p) : decayed;
  }
  return p;
}

template <typename T>
inline double hsum(const Vectorized<T>& x) {
  alignas(64) T buf[Vectorized<T>::size()];
  x.store(buf);
  double s = 0.0;
  for (int64_t i = 0; i < Vectorized<T>::size(); ++i) s += static_cast<double>(buf[i]);
  return s;
}

constexpr int64_t kSumBlock = 128;  // vectors summed in the compute type before going to double
constexpr int64_t kChunk = 32768;   // elements per work item (a multiple of every vector width)

#define ADAMHD_INLINE inline __attribute__((always_inline))  // the hot loops' pieces, inlined

// sum|x| of vectors, flushed to double every kSumBlock vectors (the blocking both passes share)
template <typename OVec>
struct AbsSum {
  double total = 0.0;
  OVec acc = OVec(0);
  int64_t in_acc = 0;
  ADAMHD_INLINE void add(const OVec& x) {
    acc = acc + x.abs();
    if (++in_acc == kSumBlock) flush();
  }
  inline void flush() {
    total += hsum(acc);
    acc = OVec(0);
    in_acc = 0;
  }
};

// One tensor's pointers and constants.
struct Job {
  void* p;
  void* g;
  void* m;
  void* v;
  void* max_v;
  int64_t numel;
  int64_t first_chunk;
  Consts<double> c;
  Flags f;
  double (*fn)(const Job&, int64_t, int64_t, bool);  // the step over [begin, end)
  double (*abs_fn)(const Job&, int64_t, int64_t);    // sum|p| over [begin, end)
};

// The step over the elements [begin, end) of one tensor; returns sum|p_new| (0 if !want_sum).
template <typename scalar_t, int DECAY, bool AMSGRAD, bool PLAIN>
double run_range(const Job& job, int64_t begin, int64_t end, bool want_sum) {
  using opmath_t = at::opmath_type<scalar_t>;
  using OVec = Vectorized<opmath_t>;
  auto* p = static_cast<scalar_t*>(job.p);
  auto* g = static_cast<scalar_t*>(job.g);
  auto* m = static_cast<scalar_t*>(job.m);
  auto* v = static_cast<scalar_t*>(job.v);
  auto* max_v = static_cast<scalar_t*>(job.max_v);
  const Flags& f = job.f;
  const Consts<opmath_t> cs = broadcast<opmath_t>(job.c);
  const Consts<OVec> cv = broadcast<OVec>(cs);
  AbsSum<OVec> sum;
  int64_t i = begin;
  OVec dummy(0);

  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    constexpr int64_t W = OVec::size();
    for (; i + W <= end; i += W) {
      OVec pv = OVec::loadu(p + i), gv = OVec::loadu(g + i);
      OVec mv = OVec::loadu(m + i), vv = OVec::loadu(v + i);
      OVec xv = AMSGRAD ? OVec::loadu(max_v + i) : dummy;
      if (f.scaled) {
        gv = gv / cv.grad_scale;
        gv.store(g + i);
      }
      pv = adamhd_update<DECAY, AMSGRAD, PLAIN>(pv, gv, mv, vv, xv, cv, f);
      pv.store(p + i);
      mv.store(m + i);
      vv.store(v + i);
      if constexpr (AMSGRAD) xv.store(max_v + i);
      if (want_sum) sum.add(pv);
    }
  } else {
    using SVec = Vectorized<scalar_t>;
    constexpr int64_t W = SVec::size();  // two float vectors
    for (; i + W <= end; i += W) {
      auto [p0, p1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(p + i));
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(g + i));
      auto [m0, m1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(m + i));
      auto [v0, v1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(v + i));
      OVec x0 = dummy, x1 = dummy;
      if constexpr (AMSGRAD) {
        std::tie(x0, x1) = at::vec::convert_to_float<scalar_t>(SVec::loadu(max_v + i));
      }
      if (f.scaled) {
        g0 = g0 / cv.grad_scale;
        g1 = g1 / cv.grad_scale;
        at::vec::convert_from_float<scalar_t>(g0, g1).store(g + i);
      }
      p0 = adamhd_update<DECAY, AMSGRAD, PLAIN>(p0, g0, m0, v0, x0, cv, f);
      p1 = adamhd_update<DECAY, AMSGRAD, PLAIN>(p1, g1, m1, v1, x1, cv, f);
      SVec pr = at::vec::convert_from_float<scalar_t>(p0, p1);
      pr.store(p + i);
      at::vec::convert_from_float<scalar_t>(m0, m1).store(m + i);
      at::vec::convert_from_float<scalar_t>(v0, v1).store(v + i);
      if constexpr (AMSGRAD) at::vec::convert_from_float<scalar_t>(x0, x1).store(max_v + i);
      if (want_sum) {
        // sum the stored (rounded) values: that is what the next step reads
        auto [r0, r1] = at::vec::convert_to_float<scalar_t>(pr);
        sum.add(r0);
        sum.add(r1);
      }
    }
  }
  if (want_sum) sum.flush();

  // scalar tail, same math
  for (; i < end; ++i) {
    opmath_t pv = static_cast<opmath_t>(p[i]), gv = static_cast<opmath_t>(g[i]);
    opmath_t mv = static_cast<opmath_t>(m[i]), vv = static_cast<opmath_t>(v[i]);
    opmath_t xv = AMSGRAD ? static_cast<opmath_t>(max_v[i]) : opmath_t(0);
    if (f.scaled) {
      gv = gv / cs.grad_scale;
      g[i] = static_cast<scalar_t>(gv);
    }
    pv = adamhd_update<DECAY, AMSGRAD, PLAIN>(pv, gv, mv, vv, xv, cs, f);
    p[i] = static_cast<scalar_t>(pv);
    m[i] = static_cast<scalar_t>(mv);
    v[i] = static_cast<scalar_t>(vv);
    if constexpr (AMSGRAD) max_v[i] = static_cast<scalar_t>(xv);
    if (want_sum) sum.total += std::abs(static_cast<double>(p[i]));
  }
  return sum.total;
}

// sum|p| over [begin, end), with exactly the blocking of run_range, so that a value recomputed
// here equals, bit for bit, the one the fused step returned for the same p.
template <typename scalar_t>
double sum_abs_range(const Job& job, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using OVec = Vectorized<opmath_t>;
  const auto* p = static_cast<const scalar_t*>(job.p);
  AbsSum<OVec> sum;
  int64_t i = begin;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    constexpr int64_t W = OVec::size();
    for (; i + W <= end; i += W) sum.add(OVec::loadu(p + i));
  } else {
    using SVec = Vectorized<scalar_t>;
    constexpr int64_t W = SVec::size();
    for (; i + W <= end; i += W) {
      auto [r0, r1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(p + i));
      sum.add(r0);
      sum.add(r1);
    }
  }
  sum.flush();
  for (; i < end; ++i) sum.total += std::abs(static_cast<double>(p[i]));
  return sum.total;
}

template <typename scalar_t>
void pick_functions(Job& job, int64_t decay_kind, bool amsgrad, bool plain) {
  job.abs_fn = &sum_abs_range<scalar_t>;
#define ADAMHD_CASE(D, A)                                                           \
  if (decay_kind == D && amsgrad == A)                                              \
    job.fn = plain ? &run_range<scalar_t, D, A, true> : &run_range<scalar_t, D, A, false>;
  ADAMHD_CASE(0, false)
  ADAMHD_CASE(1, false)
  ADAMHD_CASE(2, false)
  ADAMHD_CASE(0, true)
  ADAMHD_CASE(1, true)
  ADAMHD_CASE(2, true)
#undef ADAMHD_CASE
}

inline int64_t chunks_of(int64_t numel) { return (numel + kChunk - 1) / kChunk; }

// Runs work(k) for every k in [0, n_chunks) (chunk k of `elements` in all): inline when there is
// little work, else in one parallel region whose threads take chunks from a shared counter.
template <typename F>
void for_each_chunk(int64_t n_chunks, int64_t elements, const F& work) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n_chunks);
  if (threads <= 1 || elements < 2 * kChunk || at::in_parallel_region()) {
    for (int64_t k = 0; k < n_chunks; ++k) work(k);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t k = next.fetch_add(1); k < n_chunks; k = next.fetch_add(1)) work(k);
  });
}

// (job index, chunk index within the job) for every chunk of `jobs`
struct ChunkList {
  std::vector<int32_t> job;
  std::vector<int64_t> begin;
  int64_t elements = 0;
};

ChunkList list_chunks(std::vector<Job>& jobs, const std::vector<int64_t>& which) {
  ChunkList out;
  for (int64_t j : which) {
    Job& job = jobs[j];
    job.first_chunk = static_cast<int64_t>(out.job.size());
    for (int64_t b = 0; b < job.numel; b += kChunk) {
      out.job.push_back(static_cast<int32_t>(j));
      out.begin.push_back(b);
    }
    out.elements += job.numel;
  }
  return out;
}

// Per-tensor sums from per-chunk sums, in chunk order (independent of the thread count).
void sum_chunks(const std::vector<Job>& jobs, const std::vector<int64_t>& which,
                const std::vector<double>& part, std::vector<double>& out) {
  for (int64_t j : which) {
    double s = 0.0;
    for (int64_t k = 0; k < chunks_of(jobs[j].numel); ++k) s += part[jobs[j].first_chunk + k];
    out[j] = s;
  }
}

// ---- two phases in one parallel region (issue 20) ---------------------------------------------
//
// A per-tensor reduction (phase 1: sum|p| chunk by chunk) and the elementwise pass that needs its
// result (phase 2), for all tensors in ONE region: work items are dealt in the order
//   phase 1 of tensor 0, phase 2 of tensor 0, phase 1 of tensor 1, phase 2 of tensor 1, ...
// so a tensor read by phase 1 is read again by phase 2 while it is still in the cache (a tensor
// smaller than the cache costs its reduction no second trip to memory); a thread waits at most
// for the phase-1 chunks other threads are finishing. The thread that finishes a tensor's last
// phase-1 chunk calls finish(j) (sums the chunk sums in chunk order: thread-count independent,
// and sets the tensor's constants); a phase-2 chunk of tensor j waits (yielding) until then.
// Tensors with need1[j] == 0 must be finished before the call.

struct TwoPhaseItem {
  int32_t job;
  int32_t phase;  // 1 or 2
  int64_t begin;
};

template <typename P1, typename Fin, typename P2>
void two_phase(std::vector<Job>& jobs, const std::vector<int64_t>& which,
               const std::vector<char>& need1, std::vector<double>& part, const P1& phase1,
               const Fin& finish, const P2& phase2) {
  ChunkList chunks = list_chunks(jobs, which);  // sets first_chunk: part[] indices of phase 1
  part.assign(chunks.job.size(), 0.0);
  std::vector<TwoPhaseItem> items;
  items.reserve(2 * chunks.job.size());
  auto deal = [&](int64_t j, int32_t phase) {
    for (int64_t b = 0; b < jobs[j].numel; b += kChunk)
      items.push_back({static_cast<int32_t>(j), phase, b});
  };
  for (int64_t j : which) {
    if (need1[j]) deal(j, 1);
    deal(j, 2);
  }
  const int64_t n = static_cast<int64_t>(items.size());
  std::vector<std::atomic<int64_t>> left(jobs.size());
  std::vector<std::atomic<int>> ready(jobs.size());
  for (int64_t j : which) {
    left[j].store(need1[j] ? chunks_of(jobs[j].numel) : 0);
    ready[j].store(need1[j] ? 0 : 1);
  }
  auto run = [&](const TwoPhaseItem& it) {
    const Job& job = jobs[it.job];
    const int64_t end = std::min(it.begin + kChunk, job.numel);
    if (it.phase == 1) {
      part[job.first_chunk + it.begin / kChunk] = phase1(job, it.begin, end);
      if (left[it.job].fetch_sub(1) == 1) {
        finish(static_cast<int64_t>(it.job));
        ready[it.job].store(1, std::memory_order_release);
      }
      return;
    }
    while (!ready[it.job].load(std::memory_order_acquire)) std::this_thread::yield();
    phase2(job, it.begin, end);
  };
  for (int64_t j : which) {  // empty tensors have no chunk: finish them here
    if (need1[j] && jobs[j].numel == 0) {
      finish(j);
      ready[j].store(1);
    }
  }
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || chunks.elements < 2 * kChunk || at::in_parallel_region()) {
    for (const TwoPhaseItem& it : items) run(it);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t k = next.fetch_add(1); k < n; k = next.fetch_add(1)) run(items[k]);
  });
}

// Sum of tensor j's phase-1 chunk sums, in chunk order.
double chunk_total(const Job& job, const std::vector<double>& part) {
  double s = 0.0;
  for (int64_t k = 0; k < chunks_of(job.numel); ++k) s += part[job.first_chunk + k];
  return s;
}

// ---- the adaptive threshold's statistic, cached between steps ---------------------------------
//
// Per parameter: sum|p| as the step left it, with p's version counter (after the step), data
// pointer and size. The next step uses it as sum|p_t| if all three still match, else recomputes.
// Held through a weak pointer, so the table keeps no parameter alive and an address is never
// reused for another tensor while its entry exists.

struct CacheEntry {
  c10::weak_intrusive_ptr<c10::TensorImpl> impl;
  int64_t version;
  const void* data;
  int64_t numel;
  double sum;
};

std::mutex g_cache_mutex;
using SumTable = std::unordered_map<const c10::TensorImpl*, CacheEntry>;
SumTable g_cache;
SumTable g_sq_cache;  // sum p^2 as the option step left p (the trust ratio's ||p_t||)
size_t g_cache_sweep_at = 256;

int64_t version_of(const at::Tensor& p) { return p.is_inference() ? -1 : p._version(); }

bool cached_sum(const at::Tensor& p, double* out, const SumTable& table = g_cache) {
  auto it = table.find(p.unsafeGetTensorImpl());
  if (it == table.end()) return false;
  const CacheEntry& e = it->second;
  if (e.impl.expired() || e.version != version_of(p) || e.data != p.data_ptr() ||
      e.numel != p.numel())
    return false;
  *out = e.sum;
  return true;
}

void store_sum(const at::Tensor& p, double sum, SumTable& table = g_cache) {
  CacheEntry entry{c10::weak_intrusive_ptr<c10::TensorImpl>(p.getIntrusivePtr()), version_of(p),
                   p.data_ptr(), p.numel(), sum};
  table.insert_or_assign(p.unsafeGetTensorImpl(), std::move(entry));
  if (table.size() >= g_cache_sweep_at) {  // drop the entries of dead tensors now and then
    for (auto it = table.begin(); it != table.end();) {
      it = it->second.impl.expired() ? table.erase(it) : std::next(it);
    }
    g_cache_sweep_at = std::max<size_t>(256, 2 * table.size());
  }
}

// ---- per-tensor scalars ------------------------------------------------------------------------

double read_step_and_increment(const at::Tensor& step) {
  if (step.scalar_type() == at::kFloat) {
    float* s = step.data_ptr<float>();
    *s += 1.0f;
    return static_cast<double>(*s);
  }
  if (step.scalar_type() == at::kDouble) {
    double* s = step.data_ptr<double>();
    *s += 1.0;
    return *s;
  }
  step.add_(1);
  return step.item<double>();
}

// lerp(mu, a, w) as torch.lerp computes it, with the non-finite guard: a non-finite a leaves mu
// as it is; a non-finite mu (it never had a finite value) is replaced by a.
template <typename T>
T guarded_lerp(T mu, T a, T w) {
  if (!std::isfinite(a)) return mu;
  if (!std::isfinite(mu)) return a;
  return w < T(0.5) ? mu + w * (a - mu) : a - (a - mu) * (T(1) - w);
}

// Advances mu with this step's mean|p| in mu's dtype; returns d = scale * mu, as adamhd.decay does.
double advance_threshold(const at::Tensor& mu, double abs_mean, double beta, double scale) {
  if (mu.scalar_type() == at::kFloat) {
    float* mp = mu.data_ptr<float>();
    *mp = guarded_lerp(*mp, static_cast<float>(abs_mean), static_cast<float>(1.0 - beta));
    return static_cast<double>(*mp * static_cast<float>(scale));
  }
  double* mp = mu.data_ptr<double>();
  *mp = guarded_lerp(*mp, abs_mean, 1.0 - beta);
  return *mp * scale;
}

// ---- one step's per-tensor scalars and threshold statistic (fused_step_ and the low-bit op) ------

// Per tensor: this step's sum|p_t| for the adaptive threshold (cached, or, where stale, summed from
// the chunk sums `part` taken in the step's parallel region, each tensor just before its update:
// two_phase), the step count (read and advanced) and the threshold d; the chunk sums `part2` of
// sum|p_new| become the next step's cached statistic (finish, after the versions are bumped).
struct StepStats {
  at::TensorList steps, mus;
  double delta, delta_scale, delta_beta;
  bool advance;  // adaptive threshold with a decay
  std::vector<double> abs_sum;
  std::vector<char> stale;
  std::vector<double> part, part2;

  StepStats(std::vector<Job>& jobs, const std::vector<int64_t>& all, at::TensorList params,
            at::TensorList steps_, at::TensorList mus_, double delta_, double delta_scale_,
            double delta_beta_, bool advance_)
      : steps(steps_), mus(mus_), delta(delta_), delta_scale(delta_scale_),
        delta_beta(delta_beta_), advance(advance_), abs_sum(params.size(), 0.0),
        stale(params.size(), 0), part2(list_chunks(jobs, all).job.size(), 0.0) {
    if (!advance) return;
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    for (size_t i = 0; i < params.size(); ++i) stale[i] = !cached_sum(params[i], &abs_sum[i]);
  }

  // tensor i's step count (advanced) and threshold d (the EMA advanced with mean|p_t|)
  std::pair<double, double> next(const Job& job, int64_t i) {
    if (stale[i]) abs_sum[i] = chunk_total(job, part);
    const double step = read_step_and_increment(steps[i]);
    if (!advance) return {step, delta};
    const double mean = abs_sum[i] / static_cast<double>(std::max<int64_t>(job.numel, 1));
    return {step, advance_threshold(mus[i], mean, delta_beta, delta_scale)};
  }

  // set_constants(i) for the tensors whose sum|p_t| is cached (before the parallel region)
  template <typename SetConstants>
  void set_cached(size_t n, const SetConstants& set_constants) const {
    for (size_t i = 0; i < n; ++i) {
      if (!stale[i]) set_constants(static_cast<int64_t>(i));
    }
  }

  // The steps of `all` (job.fn) in one region, the stale sums first (two_phase)
  template <typename SetConstants>
  void run(std::vector<Job>& jobs, const std::vector<int64_t>& all,
           const SetConstants& set_constants) {
    two_phase(
        jobs, all, stale, part,
        [](const Job& job, int64_t b, int64_t e) { return job.abs_fn(job, b, e); },
        set_constants, [&](const Job& job, int64_t b, int64_t e) {
          part2[job.first_chunk + b / kChunk] = job.fn(job, b, e, advance);
        });
  }

  // the new sum|p| of each tensor cached (call after bumping the parameters' versions)
  void finish(const std::vector<Job>& jobs, const std::vector<int64_t>& all,
              at::TensorList params) const {
    if (!advance) return;
    std::vector<double> new_sum(params.size(), 0.0);
    sum_chunks(jobs, all, part2, new_sum);
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    for (size_t i = 0; i < params.size(); ++i) store_sum(params[i], new_sum[i]);
  }
};

// ---- checks, all before anything changes ------------------------------------------------------

bool is_float_kind(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_inputs(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                  at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                  at::TensorList steps, at::TensorList mus, bool amsgrad, bool advance) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n,
              "adamhd fused step: the lists of params, grads, exp_avgs, exp_avg_sqs and steps "
              "differ in length");
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs.size() == n,
              "adamhd fused step: amsgrad needs one max_exp_avg_sq per parameter");
  TORCH_CHECK(!advance || mus.size() == n,
              "adamhd fused step: the adaptive threshold needs one delta_mu per parameter");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.device().is_cpu(), "adamhd fused step: parameter ", i, " is on ", p.device(),
                "; the fused CPU kernel takes CPU tensors only");
    TORCH_CHECK(is_float_kind(p.scalar_type()) && !p.is_sparse(), "adamhd fused step: parameter ",
                i, " is ", p.scalar_type(), "; the fused CPU kernel takes dense float32, float64, "
                "bfloat16 or float16 tensors");
    std::vector<const at::Tensor*> others{&grads[i], &exp_avgs[i], &exp_avg_sqs[i]};
    if (amsgrad) others.push_back(&max_exp_avg_sqs[i]);
    for (const at::Tensor* t : others) {
      TORCH_CHECK(t->device().is_cpu() && !t->is_sparse() && t->scalar_type() == p.scalar_type() &&
                      t->sizes() == p.sizes(),
                  "adamhd fused step: the gradient and state of parameter ", i,
                  " must be dense CPU tensors of its dtype and shape (", p.scalar_type(), " ",
                  p.sizes(), "), got ", t->scalar_type(), " ", t->sizes(), " on ", t->device());
    }
    const at::Tensor& s = steps[i];
    TORCH_CHECK(s.device().is_cpu() && s.numel() == 1 && !s.is_sparse(),
                "adamhd fused step: the step of parameter ", i,
                " must be a 1-element CPU tensor");
    if (advance) {
      const at::Tensor& mu = mus[i];
      TORCH_CHECK(mu.device().is_cpu() && mu.numel() == 1 &&
                      (mu.scalar_type() == at::kFloat || mu.scalar_type() == at::kDouble),
                  "adamhd fused step: delta_mu of parameter ", i,
                  " must be a 1-element float32 or float64 CPU tensor, got ", mu.scalar_type(),
                  " with ", mu.numel(), " elements");
    }
  }
}

bool same_dense_layout(const at::Tensor& p, const std::vector<const at::Tensor*>& others) {
  if (!p.is_non_overlapping_and_dense()) return false;
  for (const at::Tensor* t : others) {
    if (t->strides() != p.strides()) return false;
  }
  return true;
}

double scalar_of(const std::optional<at::Tensor>& t, double fallback) {
  if (!t.has_value() || !t->defined()) return fallback;
  return t->detach().reshape({}).to(at::kDouble).item<double>();
}

// Tensors the kernel works on: the originals, or contiguous copies written back afterwards.
struct Operands {
  at::Tensor p, g, m, v, max_v;
  bool direct;
};


// ---- per-tensor update options in the fused step (issue 20 item 2) ----------------------------
//
// cautious, trust_ratio, adanorm and diffgrad of adamhd.optim.adamhd.update_rules (the order and
// math of rule_step.rules_adamhd), in the same op call and parallel region as the step. Per
// tensor, up to two reduction phases, then the update:
//   R1 (adanorm, or a stale sum|p_t|):  sum g^2 (g unscaled), sum|p_t| (the adaptive threshold)
//   R2 (cautious or trust_ratio):       the moments and u recomputed, not stored:
//                                       count(u*g > 0), sum (u*mask)^2, sum p_t^2 (unless the
//                                       last step left it in g_sq_cache, checked as sum|p|)
//   U:                                  moments, u, u*mask*factor, decay, p; all stored (and
//                                       sum p_new^2 with the trust ratio)
// with factor = trust_ratio / max(kept, floor). AdaNorm's m takes g*max(1, e/||g||); diffGrad's
// m_hat takes sigmoid(|g_prev - g|) and needs no reduction (one more read and write: prev_grad).
// The phases of a tensor are dealt one after the other, tensor by tensor (as two_phase does with
// two), so a tensor smaller than the cache is read from memory once.

struct OptionFlags {
  bool cautious;  // the update's mask u*g > 0 (cautious decay is Flags::cautious)
  bool trust;
  bool adanorm;
  bool diffgrad;
  bool amsgrad;
};

// sigmoid(x) = 1/(1 + exp(-x)) for x >= 0 (float vectors: torch's 20-ulp exp, inline)
template <typename T>
inline T sigmoid_nonneg(const T& x) {
  if constexpr (std::is_floating_point_v<T>) {
    return T(1) / (T(1) + std::exp(-x));
  } else if constexpr (std::is_same_v<T, Vectorized<float>>) {
    return T(1.f) / (T(1.f) + (T(0.f) - x).exp_u20());
  } else {
    return T(1) / (T(1) + (T(0) - x).exp());
  }
}

// One element's m, v, max_v advanced and its direction u (before the mask and the factors).
// g: unscaled, negated for maximize; m_scale: AdaNorm's factor on g for m.
template <typename T>
inline T option_direction(const T& g, const T& prev, T& m, T& v, T& max_v, const Consts<T>& c,
                          const T& m_scale, const Flags& f, const OptionFlags& o) {
  m = torch_lerp(m, o.adanorm ? g * m_scale : g, c.weight1, f.lerp_low);
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  if (o.amsgrad) max_v = vmaximum(max_v, v);
  const T& second = o.amsgrad ? max_v : v;
  T m_hat = m * c.inv_bc1;  // the rule divides by the scalars: within an ulp
  if (o.diffgrad) m_hat = m_hat * sigmoid_nonneg(vabs(prev - g));
  const T sqrt_v_hat = vsqrt(second) * c.inv_bc2_sqrt;
  if (f.update == kAtan2) return atan2_nonneg_x(m_hat, sqrt_v_hat * c.update_b) * c.update_a;
  if (f.update == kSoftplus) {
    return m_hat / vsoftplus(sqrt_v_hat, c.update_a, c.inv_update_a, c.update_b);
  }
  return m_hat / (sqrt_v_hat + c.eps);
}

// The cautious mask 1[u*g > 0] from the signs of m and g, 1 or 0: u has m's sign (m_hat = m/bc1
// times diffGrad's sigmoid >= 1/2, over a positive denominator; atan2 with x >= 0), so it needs
// only m, not v. It differs from the product u*g > 0 of update_rules.agreement_mask only where
// that product underflows to 0 (|u*g| < 1.4e-45 in float32) or u is NaN with m not (an inf
// gradient); the weight is NaN then either way.
template <typename T>
inline T agreement(const T& m, const T& g) {
  if constexpr (std::is_floating_point_v<T>) {
    return ((m > T(0) && g > T(0)) || (m < T(0) && g < T(0))) ? T(1) : T(0);
  } else {
    const T zero(0);
    return T::blendv(zero, T(1), ((m > zero) & (g > zero)) | ((m < zero) & (g < zero)));
  }
}

// Phase R2 (PHASE 2: acc += mask, (u*mask)^2) or U (PHASE 3: returns the new p; m, v,
// max_v and prev hold their new values) of one element.
template <int PHASE, int DECAY, typename T>
inline T option_element(T p, T g, T& m, T& v, T& max_v, T& prev, const Consts<T>& c,
                        const T& m_scale, const T& u_scale, const Flags& f, const OptionFlags& o,
                        T* acc) {
  if (f.maximize) g = T(0) - g;
  if (PHASE == 2 && !o.trust) {  // the kept fraction only: m, not u
    m = torch_lerp(m, o.adanorm ? g * m_scale : g, c.weight1, f.lerp_low);
    acc[0] = acc[0] + agreement(m, g);
    return p;
  }
  const T u = option_direction(g, prev, m, v, max_v, c, m_scale, f, o);
  prev = g;
  const T mask = o.cautious ? agreement(m, g) : T(1);
  const T w = o.cautious ? u * mask : u;
  if constexpr (PHASE == 2) {
    acc[0] = acc[0] + mask;
    acc[1] = acc[1] + w * w;  // acc[2]: sum p_t^2, added by option_range (SqSum)
    return p;
  } else {
    const T step = w * u_scale;
    const T p_t = p;
    if constexpr (DECAY == 1) {
      p = f.cautious ? select(same_sign_or_zero(step, p_t), explicit_decayed(p, c), p)
                     : explicit_decayed(p, c);
    }
    p = p + c.neg_lr * step;
    if constexpr (DECAY == 2) {
      p = f.cautious ? select(same_sign_or_zero(step, p_t), proximal_decayed(p, c), p)
                     : proximal_decayed(p, c);
    }
    return p;
  }
}

// A tensor's pointers beyond Job's, and its factors, set between the phases.
struct OptionJob {
  void* prev = nullptr;  // diffgrad: the previous gradient
  double m_scale = 1.0;  // AdaNorm: max(1, e/||g||), rounded to the weights' dtype
  double u_scale = 1.0;  // trust ratio / max(kept fraction, floor)
  double grad_scale = 0.0;  // GradScaler's scale (0: none); R1 runs before Job::c is set
  bool sq_known = false;    // trust ratio: sum p_t^2 cached by the last step (R2 skips p)
};

// sum x^2 of vectors, flushed to double every kSumBlock vectors: R2's sum p_t^2 and U's
// sum p_new^2 (the next step's) add the same values in the same order, so a cached value equals
// a recomputed one bit for bit.
template <typename OVec>
struct SqSum {
  double total = 0.0;
  OVec acc = OVec(0);
  int64_t in_acc = 0;
  inline void add(const OVec& x) {
    acc = acc + x * x;
    if (++in_acc == kSumBlock) flush();
  }
  inline void flush() {
    total += hsum(acc);
    acc = OVec(0);
    in_acc = 0;
  }
};

// Vector sums of up to three quantities, flushed to double every kSumBlock vectors.
template <typename OVec>
struct Sums3 {
  OVec acc[3] = {OVec(0), OVec(0), OVec(0)};
  double total[3] = {0.0, 0.0, 0.0};
  int64_t n = 0;
  inline void tick() {
    if (++n == kSumBlock) flush();
  }
  inline void flush() {
    for (int k = 0; k < 3; ++k) {
      total[k] += hsum(acc[k]);
      acc[k] = OVec(0);
    }
    n = 0;
  }
};

// Phase PHASE (1: R1, 2: R2, 3: U) over the elements [begin, end) of one tensor; out[0..2] as in
// the table above (U: out[0] = sum|p_new| if want_sum, with run_range's blocking).
template <typename scalar_t, int PHASE, int DECAY>
void option_range(const Job& job, const OptionJob& oj, const OptionFlags& o, int64_t begin,
                  int64_t end, bool want_abs, bool want_sum, double* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  using OVec = Vectorized<opmath_t>;
  using SVec = Vectorized<scalar_t>;
  constexpr int kParts = std::is_same_v<scalar_t, opmath_t> ? 1 : 2;
  constexpr int64_t W = SVec::size();
  auto load = [](const scalar_t* x, OVec* r) {
    if constexpr (kParts == 1) {
      r[0] = OVec::loadu(x);
    } else {
      std::tie(r[0], r[1]) = at::vec::convert_to_float<scalar_t>(SVec::loadu(x));
    }
  };
  auto store = [](scalar_t* x, const OVec* r) {
    if constexpr (kParts == 1) {
      r[0].store(x);
    } else {
      at::vec::convert_from_float<scalar_t>(r[0], r[1]).store(x);
    }
  };
  auto* p = static_cast<scalar_t*>(job.p);
  auto* g = static_cast<scalar_t*>(job.g);
  auto* m = static_cast<scalar_t*>(job.m);
  auto* v = static_cast<scalar_t*>(job.v);
  auto* max_v = static_cast<scalar_t*>(job.max_v);
  auto* prev = static_cast<scalar_t*>(oj.prev);
  const Flags& f = job.f;
  const Consts<opmath_t> cs = broadcast<opmath_t>(job.c);
  const Consts<OVec> cv = broadcast<OVec>(cs);
  const opmath_t ms(oj.m_scale), us(oj.u_scale);
  const OVec msv(ms), usv(us);
  Sums3<OVec> sums;
  AbsSum<OVec> abs;
  SqSum<OVec> sq;  // R2: sum p_t^2 (unless cached); U: sum p_new^2 (trust ratio)
  const bool read_p2 = PHASE == 2 && o.trust && !oj.sq_known;
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    OVec pv[kParts], gv[kParts], mv[kParts], vv[kParts], xv[kParts], hv[kParts];
    if constexpr (PHASE == 1) {
      if (o.adanorm) {
        load(g + i, gv);
        for (int k = 0; k < kParts; ++k) {
          if (oj.grad_scale > 0) gv[k] = gv[k] / OVec(opmath_t(oj.grad_scale));
          sums.acc[0] = sums.acc[0] + gv[k] * gv[k];
        }
        sums.tick();
      }
      if (want_abs) {
        load(p + i, pv);
        for (int k = 0; k < kParts; ++k) abs.add(pv[k]);
      }
      continue;
    }
    load(g + i, gv);
    if (f.scaled) {
      for (int k = 0; k < kParts; ++k) gv[k] = gv[k] / cv.grad_scale;
      if (PHASE == 3) store(g + i, gv);
    }
    if (PHASE == 3 || read_p2) {
      load(p + i, pv);
      if (read_p2) {
        for (int k = 0; k < kParts; ++k) sq.add(pv[k]);
      }
    } else {
      for (int k = 0; k < kParts; ++k) pv[k] = OVec(0);
    }
    load(m + i, mv);
    if (PHASE == 3 || o.trust) {  // R2 for cautious alone reads g and m only
      load(v + i, vv);
      if (o.amsgrad) load(max_v + i, xv);
      if (o.diffgrad) load(prev + i, hv);
    }
    for (int k = 0; k < kParts; ++k) {
      pv[k] = option_element<PHASE, DECAY>(pv[k], gv[k], mv[k], vv[k], xv[k], hv[k], cv, msv,
                                           usv, f, o, sums.acc);
    }
    if constexpr (PHASE == 2) {
      sums.tick();
    } else {
      store(p + i, pv);
      store(m + i, mv);
      store(v + i, vv);
      if (o.amsgrad) store(max_v + i, xv);
      if (o.diffgrad) store(prev + i, hv);
      if (want_sum || o.trust) {  // the stored (rounded) values, as run_range
        OVec r[kParts];
        load(p + i, r);
        for (int k = 0; k < kParts; ++k) {
          if (want_sum) abs.add(r[k]);
          if (o.trust) sq.add(r[k]);
        }
      }
    }
  }
  sums.flush();
  abs.flush();
  sq.flush();
  for (; i < end; ++i) {  // scalar tail, same math
    opmath_t pv = p[i], gv = g[i], mv = m[i], vv = v[i];
    opmath_t xv = o.amsgrad ? opmath_t(max_v[i]) : opmath_t(0);
    opmath_t hv = o.diffgrad ? opmath_t(prev[i]) : opmath_t(0);
    if constexpr (PHASE == 1) {
      if (oj.grad_scale > 0) gv = gv / opmath_t(oj.grad_scale);
      if (o.adanorm) sums.total[0] += static_cast<double>(gv) * static_cast<double>(gv);
      if (want_abs) abs.total += std::abs(static_cast<double>(p[i]));
      continue;
    }
    if (f.scaled) {
      gv = gv / cs.grad_scale;
      if (PHASE == 3) g[i] = static_cast<scalar_t>(gv);
    }
    opmath_t acc[3] = {0, 0, 0};
    if (read_p2) sq.total += static_cast<double>(p[i]) * static_cast<double>(p[i]);
    pv = option_element<PHASE, DECAY>(pv, gv, mv, vv, xv, hv, cs, ms, us, f, o, acc);
    if constexpr (PHASE == 2) {
      for (int k = 0; k < 2; ++k) sums.total[k] += static_cast<double>(acc[k]);
    } else {
      p[i] = static_cast<scalar_t>(pv);
      m[i] = static_cast<scalar_t>(mv);
      v[i] = static_cast<scalar_t>(vv);
      if (o.amsgrad) max_v[i] = static_cast<scalar_t>(xv);
      if (o.diffgrad) prev[i] = static_cast<scalar_t>(hv);
      if (want_sum) abs.total += std::abs(static_cast<double>(p[i]));
      if (o.trust) sq.total += static_cast<double>(p[i]) * static_cast<double>(p[i]);
    }
  }
  if constexpr (PHASE == 1) {
    out[0] = sums.total[0];
    out[1] = abs.total;
  } else if constexpr (PHASE == 2) {
    out[0] = sums.total[0];
    out[1] = sums.total[1];
    out[2] = sq.total;
  } else {
    out[0] = abs.total;
    out[1] = sq.total;
  }
}

using OptionFn = void (*)(const Job&, const OptionJob&, const OptionFlags&, int64_t, int64_t,
                          bool, bool, double*);

template <typename scalar_t>
std::array<OptionFn, 3> option_functions(int64_t decay_kind) {
#define ADAMHD_OPTION_CASE(D)                                                              \
  if (decay_kind == D)                                                                     \
    return {&option_range<scalar_t, 1, D>, &option_range<scalar_t, 2, D>,                  \
            &option_range<scalar_t, 3, D>};
  ADAMHD_OPTION_CASE(0)
  ADAMHD_OPTION_CASE(1)
  ADAMHD_OPTION_CASE(2)
#undef ADAMHD_OPTION_CASE
  TORCH_CHECK(false, "adamhd fused step: bad decay kind ", decay_kind);
}

// Several phases per tensor in one parallel region (two_phase with a list of phases per tensor):
// the items are dealt tensor by tensor, phase by phase; an item of phase pos waits (yielding)
// until every chunk of the tensor's phase pos - 1 is done and finish(j, that phase) has run (the
// thread that does a phase's last chunk calls it). Items are taken in dealing order, so the
// earliest unfinished item never waits: no deadlock.
struct PhaseItem {
  int32_t job;
  int32_t pos;
  int64_t begin;
};

template <typename Run, typename Fin>
void run_phases(const std::vector<Job>& jobs, const std::vector<int64_t>& which,
                const std::vector<std::vector<int>>& phases, int64_t elements, const Run& run,
                const Fin& finish) {
  std::vector<PhaseItem> items;
  std::vector<std::atomic<int64_t>> left(jobs.size());
  std::vector<std::atomic<int>> done(jobs.size());
  for (int64_t j : which) {
    const int last = static_cast<int>(phases[j].size()) - 1;
    for (int pos = 0; pos <= last; ++pos) {
      for (int64_t b = 0; b < jobs[j].numel; b += kChunk)
        items.push_back({static_cast<int32_t>(j), pos, b});
    }
    left[j].store(chunks_of(jobs[j].numel));
    done[j].store(0);
    if (jobs[j].numel == 0) {  // no chunk: its reductions are empty sums
      for (int pos = 0; pos < last; ++pos) finish(j, phases[j][pos]);
      done[j].store(last);
    }
  }
  auto exec = [&](const PhaseItem& it) {
    const std::vector<int>& ph = phases[it.job];
    const Job& job = jobs[it.job];
    while (done[it.job].load(std::memory_order_acquire) < it.pos) std::this_thread::yield();
    run(static_cast<int64_t>(it.job), ph[it.pos], it.begin,
        std::min(it.begin + kChunk, job.numel));
    if (it.pos + 1 < static_cast<int>(ph.size()) && left[it.job].fetch_sub(1) == 1) {
      finish(static_cast<int64_t>(it.job), ph[it.pos]);
      left[it.job].store(chunks_of(job.numel));
      done[it.job].store(it.pos + 1, std::memory_order_release);
    }
  };
  const int64_t n = static_cast<int64_t>(items.size());
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || elements < 2 * kChunk || at::in_parallel_region()) {
    for (const PhaseItem& it : items) exec(it);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t k = next.fetch_add(1); k < n; k = next.fetch_add(1)) exec(items[k]);
  });
}

// AdaNorm: e <- gamma*e + (1 - gamma)*||g|| in e's dtype (update_rules.adanorm_scale_); returns
// max(1, e/||g||), 1 where ||g|| = 0, rounded to the weights' dtype (the rule multiplies g by it
// in that dtype).
double adanorm_factor(const at::Tensor& e, double sum_sq, double gamma, at::ScalarType dtype) {
  double s = 1.0;
  if (e.scalar_type() == at::kFloat) {
    float* ep = e.data_ptr<float>();
    const float norm = static_cast<float>(std::sqrt(sum_sq));
    *ep = *ep * static_cast<float>(gamma) + static_cast<float>(1.0 - gamma) * norm;
    if (*ep > norm && norm > 0.f) s = static_cast<double>(*ep / norm);
  } else {
    double* ep = e.data_ptr<double>();
    const double norm = std::sqrt(sum_sq);
    *ep = *ep * gamma + (1.0 - gamma) * norm;
    if (*ep > norm && norm > 0.0) s = *ep / norm;
  }
  if (dtype == at::kBFloat16) return static_cast<double>(static_cast<float>(c10::BFloat16(s)));
  if (dtype == at::kHalf) return static_cast<double>(static_cast<float>(c10::Half(s)));
  if (dtype == at::kFloat) return static_cast<double>(static_cast<float>(s));
  return s;
}

// The factor on u*mask: trust ratio ||p_t||/||u|| (1 where either is 0 or not finite) over
// max(kept fraction, floor) (cautious). sums: count(mask), sum (u*mask)^2, sum p_t^2.
double update_factor(const double* sums, int64_t numel, const OptionFlags& o, double floor) {
  double kept = 1.0;
  if (o.cautious) {
    kept = std::max(sums[0] / static_cast<double>(std::max<int64_t>(numel, 1)), floor);
  }
  double ratio = 1.0;
  if (o.trust) {
    const double p_norm = std::sqrt(sums[2]), u_norm = std::sqrt(sums[1]) / kept;
    if (p_norm > 0 && u_norm > 0 && std::isfinite(p_norm / u_norm)) ratio = p_norm / u_norm;
  }
  return ratio / kept;
}

void check_option_inputs(at::TensorList params, at::TensorList prev_grads,
                         at::TensorList adanorm_es, const OptionFlags& o) {
  const size_t n = params.size();
  TORCH_CHECK(!o.diffgrad || prev_grads.size() == n,
              "adamhd fused step: diffgrad needs one prev_grad per parameter");
  TORCH_CHECK(!o.adanorm || adanorm_es.size() == n,
              "adamhd fused step: adanorm needs one adanorm_e per parameter");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    if (o.diffgrad) {
      const at::Tensor& h = prev_grads[i];
      TORCH_CHECK(h.device().is_cpu() && !h.is_sparse() && h.scalar_type() == p.scalar_type() &&
                      h.sizes() == p.sizes(),
                  "adamhd fused step: prev_grad of parameter ", i, " must be a dense CPU tensor "
                  "of its dtype and shape (", p.scalar_type(), " ", p.sizes(), "), got ",
                  h.scalar_type(), " ", h.sizes(), " on ", h.device());
    }
    if (o.adanorm) {
      const at::Tensor& e = adanorm_es[i];
      TORCH_CHECK(e.device().is_cpu() && e.numel() == 1 &&
                      (e.scalar_type() == at::kFloat || e.scalar_type() == at::kDouble),
                  "adamhd fused step: adanorm_e of parameter ", i,
                  " must be a 1-element float32 or float64 CPU tensor, got ", e.scalar_type(),
                  " with ", e.numel(), " elements");
    }
  }
}

// The step with options, in place of two_phase in fused_step_: set_constants(j) as there (once
// per tensor: before the region where !stale[j], at the end of R1 otherwise), `part` the stale
// sum|p_t| chunk sums it reads, part2 the sum|p_new| chunk sums (advance).
template <typename SetConstants>
void option_step(std::vector<Job>& jobs, const std::vector<int64_t>& all,
                 const std::vector<char>& stale, std::vector<double>& part,
                 std::vector<double>& part2, const SetConstants& set_constants,
                 at::TensorList params, std::vector<at::Tensor>& prevs,
                 at::TensorList adanorm_es, const OptionFlags& o, int64_t decay_kind,
                 bool advance, double gamma, double floor, double grad_scale,
                 std::vector<double>& new_sq) {
  const size_t n = jobs.size();
  ChunkList chunks = list_chunks(jobs, all);  // sets first_chunk
  part.assign(chunks.job.size(), 0.0);
  std::vector<double> sq_part(chunks.job.size(), 0.0), sq_cached(n, 0.0);
  std::vector<std::array<double, 3>> red(chunks.job.size(), {0.0, 0.0, 0.0});
  std::vector<OptionJob> extra(n);
  std::vector<std::array<OptionFn, 3>> fns(n);
  std::vector<std::vector<int>> phases(n);
  for (size_t i = 0; i < n; ++i) {
    extra[i].prev = o.diffgrad ? prevs[i].data_ptr() : nullptr;
    extra[i].grad_scale = grad_scale;
    if (o.trust) {
      std::lock_guard<std::mutex> lock(g_cache_mutex);
      extra[i].sq_known = cached_sum(params[i], &sq_cached[i], g_sq_cache);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, params[i].scalar_type(), "opt", [&] {
      fns[i] = option_functions<scalar_t>(decay_kind);
    });
    if (stale[i] || o.adanorm) phases[i].push_back(1);
    if (o.cautious || o.trust) phases[i].push_back(2);
    phases[i].push_back(3);
  }
  auto run = [&](int64_t j, int phase, int64_t b, int64_t e) {
    double out[3] = {0.0, 0.0, 0.0};
    fns[j][phase - 1](jobs[j], extra[j], o, b, e, stale[j], advance, out);
    const int64_t k = jobs[j].first_chunk + b / kChunk;
    if (phase == 1) {
      red[k][0] = out[0];
      part[k] = out[1];
    } else if (phase == 2) {
      red[k] = {out[0], out[1], out[2]};
    } else {
      part2[k] = out[0];
      sq_part[k] = out[1];
    }
  };
  auto finish = [&](int64_t j, int phase) {
    double sums[3] = {0.0, 0.0, 0.0};
    for (int64_t k = 0; k < chunks_of(jobs[j].numel); ++k) {
      for (int q = 0; q < 3; ++q) sums[q] += red[jobs[j].first_chunk + k][q];
    }
    if (phase == 1) {
      if (stale[j]) set_constants(j);
      if (o.adanorm) {
        extra[j].m_scale = adanorm_factor(adanorm_es[j], sums[0], gamma, params[j].scalar_type());
      }
    } else {
      if (extra[j].sq_known) sums[2] = sq_cached[j];
      extra[j].u_scale = update_factor(sums, jobs[j].numel, o, floor);
    }
  };
  run_phases(jobs, all, phases, chunks.elements, run, finish);
  new_sq.assign(n, 0.0);
  if (o.trust) sum_chunks(jobs, all, sq_part, new_sq);
}

}  // namespace

// One fused AdamHD step over lists of CPU tensors, in place (see the top of this file).
// decay_kind: 0 none (weight_decay == 0), 1 explicit, 2 proximal. delta: the fixed threshold
// (ignored when adaptive). update_kind: 0 adam (u = m_hat/(sqrt(v_hat) + eps)), 1 atan2
// (u = a*atan2(m_hat, b*sqrt(v_hat)); update_a = a, update_b = b), 2 softplus
// (u = m_hat/softplus_beta(sqrt(v_hat)); update_a = beta, update_b = torch's threshold 20).
// cautious: decay only where sign(m) * sign(p_t) >= 0 (the sign of u is m's).
// cautious_update, trust_ratio, adanorm, diffgrad: the update rule's per-tensor options (see
// option_step; prev_grads and adanorm_es their state, adanorm_gamma and cautious_floor their
// constants).
void fused_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                 at::TensorList mus, const std::optional<at::Tensor>& lr_tensor,
                 const std::optional<at::Tensor>& grad_scale,
                 const std::optional<at::Tensor>& found_inf, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int64_t decay_kind, double delta,
                 double delta_scale, double delta_beta, bool adaptive, bool amsgrad,
                 bool maximize, int64_t update_kind, double update_a, double update_b,
                 bool cautious, at::TensorList prev_grads, at::TensorList adanorm_es,
                 bool cautious_update, bool trust_ratio, bool adanorm, bool diffgrad,
                 double adanorm_gamma, double cautious_floor) {
  TORCH_CHECK(decay_kind >= 0 && decay_kind <= 2, "adamhd fused step: bad decay kind ",
              decay_kind);
  TORCH_CHECK(update_kind >= kAdam && update_kind <= kSoftplus,
              "adamhd fused step: bad update kind ", update_kind);
  const bool advance = adaptive && decay_kind != 0;
  check_inputs(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, mus, amsgrad,
               advance);
  const OptionFlags options{cautious_update, trust_ratio, adanorm, diffgrad, amsgrad};
  const bool with_options = cautious_update || trust_ratio || adanorm || diffgrad;
  check_option_inputs(params, prev_grads, adanorm_es, options);
  if (scalar_of(found_inf, 0.0) != 0.0) return;  // GradScaler found inf/nan: change nothing
  const double scale = scalar_of(grad_scale, 0.0);
  lr = scalar_of(lr_tensor, lr);
  const double tau = lr * weight_decay;
  const size_t n = params.size();

  std::vector<Operands> ops(n);
  std::vector<Job> jobs(n);
  std::vector<int64_t> all;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    std::vector<const at::Tensor*> others{&grads[i], &exp_avgs[i], &exp_avg_sqs[i]};
    if (amsgrad) others.push_back(&max_exp_avg_sqs[i]);
    Operands& o = ops[i];
    o.direct = same_dense_layout(p, others);
    auto take = [&](const at::Tensor& t) { return o.direct ? t : t.contiguous(); };
    o.p = take(p);
    o.g = take(grads[i]);
    o.m = take(exp_avgs[i]);
    o.v = take(exp_avg_sqs[i]);
    if (amsgrad) o.max_v = take(max_exp_avg_sqs[i]);
    Job& job = jobs[i];
    job.p = o.p.data_ptr();
    job.g = o.g.data_ptr();
    job.m = o.m.data_ptr();
    job.v = o.v.data_ptr();
    job.max_v = amsgrad ? o.max_v.data_ptr() : nullptr;
    job.numel = p.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.scalar_type(), "adamhd_pick", [&] {
      pick_functions<scalar_t>(job, decay_kind, amsgrad, update_kind == kAdam && !cautious);
    });
    all.push_back(static_cast<int64_t>(i));
  }

  // this step's sum|p_t| for the adaptive threshold: cached, or recomputed in the same parallel
  // region, each tensor just before its update (two_phase: read again while in the cache)
  StepStats stats(jobs, all, params, steps, mus, delta, delta_scale, delta_beta, advance);
  auto set_constants = [&](int64_t i) {
    Job& job = jobs[i];
    const auto [step, d] = stats.next(job, i);
    const double bc1 = 1.0 - std::pow(beta1, step);
    const double weight1 = 1.0 - beta1;
    job.c = Consts<double>{weight1,     beta2,    1.0 - beta2, -(lr / bc1),
                           std::pow(1.0 - std::pow(beta2, step), 0.5),
                           eps,         tau,      1.0 - tau,   1.0 + tau,
                           d,           -d,       scale > 0 ? scale : 1.0,
                           -lr,         bc1,      update_a,    update_b,
                           1.0 / bc1,   1.0 / std::pow(1.0 - std::pow(beta2, step), 0.5),
                           1.0 / update_a};
    job.f = Flags{weight1 < 0.5, maximize, scale > 0, update_kind, cautious};
  };
  stats.set_cached(n, set_constants);
  std::vector<at::Tensor> prevs(diffgrad ? n : 0);  // prev_grads, or copies in p's layout
  for (size_t i = 0; i < prevs.size(); ++i) {
    const bool same = ops[i].direct && prev_grads[i].strides() == params[i].strides();
    prevs[i] = same ? prev_grads[i] : at::empty_like(ops[i].p).copy_(prev_grads[i]);
  }
  std::vector<double> new_sq;  // trust ratio: sum p_new^2, the next step's ||p_t||^2
  if (with_options) {
    option_step(jobs, all, stats.stale, stats.part, stats.part2, set_constants, params, prevs,
                adanorm_es, options, decay_kind, advance, adanorm_gamma, cautious_floor, scale,
                new_sq);
  } else {
    stats.run(jobs, all, set_constants);
  }
  for (size_t i = 0; i < prevs.size(); ++i) {
    if (!prevs[i].is_same(prev_grads[i])) prev_grads[i].copy_(prevs[i]);
  }

  for (size_t i = 0; i < n; ++i) {
    const Operands& o = ops[i];
    if (!o.direct) {
      params[i].copy_(o.p);
      exp_avgs[i].copy_(o.m);
      exp_avg_sqs[i].copy_(o.v);
      if (amsgrad) max_exp_avg_sqs[i].copy_(o.max_v);
      if (scale > 0) grads[i].copy_(o.g);
    }
    if (!params[i].is_inference()) torch::autograd::impl::bump_version(params[i]);
  }
  stats.finish(jobs, all, params);
  if (trust_ratio) {
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    for (size_t i = 0; i < n; ++i) store_sum(params[i], new_sq[i], g_sq_cache);
  }
}

// sum|p| per tensor (float64), with the fused step's blocking: for tests of the cache.
at::Tensor abs_sums(const std::vector<at::Tensor>& params) {
  std::vector<Job> jobs(params.size());
  std::vector<at::Tensor> dense;
  std::vector<int64_t> all;
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].device().is_cpu() && is_float_kind(params[i].scalar_type()),
                "adamhd: abs_sums takes float CPU tensors");
    dense.push_back(params[i].contiguous());
    jobs[i].p = dense.back().data_ptr();
    jobs[i].numel = dense.back().numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, params[i].scalar_type(), "abs", [&] {
      pick_functions<scalar_t>(jobs[i], 0, false, true);
    });
    all.push_back(static_cast<int64_t>(i));
  }
  ChunkList chunks = list_chunks(jobs, all);
  std::vector<double> part(chunks.job.size(), 0.0), out(params.size(), 0.0);
  for_each_chunk(static_cast<int64_t>(part.size()), chunks.elements, [&](int64_t k) {
    const Job& job = jobs[chunks.job[k]];
    const int64_t b = chunks.begin[k];
    part[k] = job.abs_fn(job, b, std::min(b + kChunk, job.numel));
  });
  sum_chunks(jobs, all, part, out);
  return at::tensor(out, at::TensorOptions().dtype(at::kDouble));
}

// The cached sum|p| of each tensor (NaN where none is valid): for tests.
at::Tensor cached_abs_sums(const std::vector<at::Tensor>& params) {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  std::vector<double> out(params.size(), std::nan(""));
  for (size_t i = 0; i < params.size(); ++i) cached_sum(params[i], &out[i]);
  return at::tensor(out, at::TensorOptions().dtype(at::kDouble));
}

// Drops the cached sums of `params` (all of them if `everything`).
void forget(const std::vector<at::Tensor>& params, bool everything) {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  if (everything) {
    g_cache.clear();
    g_sq_cache.clear();
    return;
  }
  for (const at::Tensor& p : params) {
    g_cache.erase(p.unsafeGetTensorImpl());
    g_sq_cache.erase(p.unsafeGetTensorImpl());
  }
}

// ---- adamhd::decay_: the decoupled decay pass of with_decoupled_decay (issue 20) -------------
//
// The rules of adamhd.decay.rules over a list of tensors in one call, in place:
//   x <- x + alpha * clip(x, -b, b)         (torch's add(x, pull, alpha=alpha): an FMA)
//   explicit (on p_t, before the base step):  alpha = -tau,          b = d
//            with d = inf and no mask:        x <- x * (1 - tau)     (AdamW's decay, bit for bit)
//   proximal (on q, after the base step):     alpha = -tau/(1 + tau), b = (1 + tau)*d
//   cautious (p_ts: copies of p_t; params hold p_new, after the base step):
//            mask = sign(p_t - p_new) * p_t >= 0   (the base step's update u ~ p_t - p_new)
//            explicit: p <- (p_new - p_t) + (mask ? decayed(p_t) : p_t)   (the rule's order)
//            proximal: p <- mask ? decayed(p_new) : p_new
// The threshold d: `ds` (one 0-dim tensor per tensor) if given; else with `adaptive` the guarded
// EMA of mean|src| (src: p_ts if given, else params), computed in the same parallel region just
// before each tensor's decay (two_phase), advancing `mus` (a non-finite mu takes the mean, so a
// NaN mu starts the EMA at a_1; d = inf while mu is not finite, as adamhd.decay.threshold); else
// `delta`. The Job fields carry: p (params), g (p_ts), v (the source of mean|.|),
// c.neg_lr = alpha, c.d = d, c.one_plus_tau = the proximal bound's factor, c.one_minus_tau.

namespace {

template <int FORM, bool CAUTIOUS, bool L2MUL, typename T>
inline T decay_one(const T& p, const T& p_t, const T& alpha, const T& lo, const T& hi,
                   const T& one_minus_tau) {
  const T& x = (FORM == 1 && CAUTIOUS) ? p_t : p;
  T decayed;
  if constexpr (L2MUL) {
    decayed = x * one_minus_tau;
  } else if constexpr (std::is_floating_point_v<T>) {
    decayed = std::fma(vminimum(vmaximum(x, lo), hi), alpha, x);
  } else {
    decayed = at::vec::fmadd(vminimum(vmaximum(x, lo), hi), alpha, x);
  }
  if constexpr (!CAUTIOUS) {
    return decayed;
  } else {
    const auto mask = same_sign_or_zero(p_t - p, p_t);
    if constexpr (FORM == 1) return (p - p_t) + select(mask, decayed, p_t);
    return select(mask, decayed, p);
  }
}

template <typename scalar_t, int FORM, bool CAUTIOUS, bool L2MUL>
double decay_range(const Job& job, int64_t begin, int64_t end, bool) {
  using opmath_t = at::opmath_type<scalar_t>;
  using OVec = Vectorized<opmath_t>;
  auto* p = static_cast<scalar_t*>(job.p);
  const auto* pt = static_cast<const scalar_t*>(job.g);
  const opmath_t bound =
      FORM == 1 ? opmath_t(job.c.d) : opmath_t(job.c.d) * opmath_t(job.c.one_plus_tau);
  const opmath_t alpha(job.c.neg_lr), omt(job.c.one_minus_tau);
  const OVec va(alpha), vlo(-bound), vhi(bound), vomt(omt);
  int64_t i = begin;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    constexpr int64_t W = OVec::size();
    for (; i + W <= end; i += W) {
      const OVec pv = OVec::loadu(p + i);
      const OVec tv = CAUTIOUS ? OVec::loadu(pt + i) : pv;
      decay_one<FORM, CAUTIOUS, L2MUL>(pv, tv, va, vlo, vhi, vomt).store(p + i);
    }
  } else {
    using SVec = Vectorized<scalar_t>;
    constexpr int64_t W = SVec::size();
    for (; i + W <= end; i += W) {
      auto [p0, p1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(p + i));
      OVec t0 = p0, t1 = p1;
      if constexpr (CAUTIOUS) std::tie(t0, t1) = at::vec::convert_to_float<scalar_t>(SVec::loadu(pt + i));
      p0 = decay_one<FORM, CAUTIOUS, L2MUL>(p0, t0, va, vlo, vhi, vomt);
      p1 = decay_one<FORM, CAUTIOUS, L2MUL>(p1, t1, va, vlo, vhi, vomt);
      at::vec::convert_from_float<scalar_t>(p0, p1).store(p + i);
    }
  }
  for (; i < end; ++i) {
    const opmath_t pv = static_cast<opmath_t>(p[i]);
    const opmath_t tv = CAUTIOUS ? static_cast<opmath_t>(pt[i]) : pv;
    p[i] = static_cast<scalar_t>(decay_one<FORM, CAUTIOUS, L2MUL>(pv, tv, alpha, -bound, bound, omt));
  }
  return 0.0;
}

template <typename scalar_t>
void pick_decay(Job& job, int64_t form, bool cautious, bool l2mul) {
  job.abs_fn = &sum_abs_range<scalar_t>;
#define ADAMHD_DECAY_CASE(F, C)                                                               \
  if (form == F && cautious == C)                                                             \
    job.fn = l2mul ? &decay_range<scalar_t, F, C, true> : &decay_range<scalar_t, F, C, false>;
  ADAMHD_DECAY_CASE(1, false)
  ADAMHD_DECAY_CASE(1, true)
  ADAMHD_DECAY_CASE(2, false)
  ADAMHD_DECAY_CASE(2, true)
#undef ADAMHD_DECAY_CASE
}

void check_decay_inputs(at::TensorList params, at::TensorList p_ts, at::TensorList mus,
                        at::TensorList ds, int64_t form, bool cautious, bool stat) {
  const size_t n = params.size();
  TORCH_CHECK(form == 1 || form == 2, "adamhd decay pass: bad form ", form);
  TORCH_CHECK(!cautious || p_ts.size() == n,
              "adamhd decay pass: cautious decay needs one copy of p_t per parameter");
  TORCH_CHECK(ds.empty() || ds.size() == n, "adamhd decay pass: one threshold per parameter");
  TORCH_CHECK(!stat || mus.size() == n,
              "adamhd decay pass: the adaptive threshold needs one delta_mu per parameter");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.device().is_cpu() && !p.is_sparse() && is_float_kind(p.scalar_type()) &&
                    p.is_contiguous(),
                "adamhd decay pass: parameter ", i, " must be a contiguous dense float CPU "
                "tensor, got ", p.scalar_type(), " on ", p.device());
    if (cautious) {
      const at::Tensor& t = p_ts[i];
      TORCH_CHECK(t.device().is_cpu() && !t.is_sparse() && t.scalar_type() == p.scalar_type() &&
                      t.sizes() == p.sizes() && t.is_contiguous(),
                  "adamhd decay pass: the copy of p_t of parameter ", i,
                  " must be a contiguous CPU tensor of its dtype and shape");
    }
    if (!ds.empty()) {
      TORCH_CHECK(ds[i].device().is_cpu() && ds[i].numel() == 1,
                  "adamhd decay pass: threshold ", i, " must be a 1-element CPU tensor");
    }
    if (stat) {
      TORCH_CHECK(mus[i].device().is_cpu() && mus[i].numel() == 1 &&
                      (mus[i].scalar_type() == at::kFloat || mus[i].scalar_type() == at::kDouble),
                  "adamhd decay pass: delta_mu of parameter ", i,
                  " must be a 1-element float32 or float64 CPU tensor");
    }
  }
}

}  // namespace

void decay_(at::TensorList params, at::TensorList p_ts, at::TensorList mus, at::TensorList ds,
            const std::optional<at::Tensor>& tau_tensor, double tau, int64_t form, double delta,
            double delta_scale, double delta_beta, bool adaptive, bool cautious) {
  const bool stat = adaptive && ds.empty();
  check_decay_inputs(params, p_ts, mus, ds, form, cautious, stat);
  tau = scalar_of(tau_tensor, tau);
  const size_t n = params.size();
  std::vector<Job> jobs(n);
  std::vector<int64_t> all;
  for (size_t i = 0; i < n; ++i) {
    Job& job = jobs[i];
    job.p = params[i].data_ptr();
    job.g = cautious ? p_ts[i].data_ptr() : nullptr;
    job.v = cautious ? job.g : job.p;
    job.numel = params[i].numel();
    all.push_back(static_cast<int64_t>(i));
  }
  std::vector<char> need1(n, stat ? 1 : 0);
  std::vector<double> part;
  auto finish = [&](int64_t i) {
    Job& job = jobs[i];
    double d = delta;
    if (!ds.empty()) {
      d = scalar_of(ds[i], delta);
    } else if (stat) {
      const double mean = chunk_total(job, part) / static_cast<double>(std::max<int64_t>(job.numel, 1));
      d = advance_threshold(mus[i], mean, delta_beta, delta_scale);
      const double mu = mus[i].scalar_type() == at::kFloat ? *mus[i].data_ptr<float>()
                                                           : *mus[i].data_ptr<double>();
      if (!std::isfinite(mu)) d = INFINITY;
    }
    job.c = Consts<double>{};
    job.c.d = d;
    job.c.one_plus_tau = 1.0 + tau;
    job.c.one_minus_tau = 1.0 - tau;
    job.c.neg_lr = form == 1 ? -tau : -tau / (1.0 + tau);
    const bool l2mul = form == 1 && !cautious && std::isinf(d) && d > 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, params[i].scalar_type(), "decay", [&] {
      pick_decay<scalar_t>(job, form, cautious, l2mul);
    });
  };
  for (size_t i = 0; i < n; ++i) {
    if (!need1[i]) finish(static_cast<int64_t>(i));
    else AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, params[i].scalar_type(), "abs", [&] {
      jobs[i].abs_fn = &sum_abs_range<scalar_t>;
    });
  }
  two_phase(
      jobs, all, need1, part,
      [](const Job& job, int64_t b, int64_t e) {
        Job src = job;
        src.p = job.v;
        return job.abs_fn(src, b, e);
      },
      finish, [](const Job& job, int64_t b, int64_t e) { job.fn(job, b, e, false); });
  for (size_t i = 0; i < n; ++i) {
    if (!params[i].is_inference()) torch::autograd::impl::bump_version(params[i]);
  }
}

// ==== adamhd::fused_lowbit_step_: low-bit moments in one pass (issue 19) =======================
//
// The step of adamhd.optim.adamhd.lowbit (state_dtype="bfloat16"/"int8", bf16_stochastic_round)
// fused. Per block of kLowBlock = 256 elements (the int8 code's block), in one pass over memory:
// p and g are read into float buffers, the moments are decoded into float buffers, the float
// step of adamhd_update (the code fused_step_ runs, so the floats are those fused_step_ computes
// on float32 working copies) updates them, and everything is written back in its storage format.
// Storage of a tensor's moments, from exp_avg's dtype (exp_avg_sq's must be the same):
//   uint8     the 8-bit block code of lowbit.py (encode_int8): m as sign + 4 exponent + 3
//             mantissa bits of m/max|m|, v as 4 + 4 bits of sqrt(v)/max sqrt(v) (sqrt correctly
//             rounded), one float32 scale per block in exp_avg_scales / exp_avg_sq_scales (listed
//             for the uint8 tensors only, in order);
//   bfloat16  stochastic rounding on every write (lowbit.bf16_round_stochastic);
//   otherwise the parameter's dtype (float32, or float16), rounded to nearest.
// Parameters: float32, bfloat16 (param_sr: rounded stochastically, else to nearest), float16.
// The rounding noise is lowbit.py's counter-based hash (rounding_key, noise16): the same bits as
// the reference path's, for any thread count. The adaptive threshold's sum|p| is taken over the
// float values of the stored p with float32 blocking (lowbit_sum_abs), so a bf16 tensor's
// statistic equals the one fused_step_ computes on its float32 working copy.

#include <cstring>

namespace {

constexpr int64_t kLowBlock = 256;
enum LowMoment : int { kMomentPlain = 0, kMomentBF16 = 1, kMomentInt8 = 2 };

inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  return x ^ (x >> 16);
}

// lowbit.rounding_key: (seed, position, stream, step) -> the key of one tensor's noise
uint32_t low_rounding_key(uint32_t seed, int64_t position, uint32_t stream, int64_t step) {
  uint32_t key = mix32(seed + 0x632BE5ABu * static_cast<uint32_t>(position + 1));
  key = mix32(key ^ (0x1B873593u * (stream + 1)));
  return mix32(key + 0x5BD1E995u * static_cast<uint32_t>(step));
}

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// bf16 bits of x[0, n): STOCHASTIC (16 noise bits mix32(base + i)), or to nearest
template <bool STOCHASTIC>
void bf16_bits(const float* x, uint16_t* out, uint32_t n, uint32_t base) {
  for (uint32_t i = 0; i < n; ++i) {  // 32-bit i: the noise's index without 64-bit lanes
    const uint32_t u = float_bits(x[i]);
    const uint32_t add = STOCHASTIC ? (mix32(base + i) & 0xFFFFu) : (0x7FFFu + ((u >> 16) & 1u));
    out[i] = x[i] != x[i] ? uint16_t(0x7FC0) : static_cast<uint16_t>((u + add) >> 16);
  }
}

// bf16 bits of a block x[0, r): stochastic (16 noise bits of element `first + i`), or to nearest
void store_bf16(const float* x, uint16_t* out, int64_t r, bool stochastic, uint32_t key,
                int64_t first) {
  const uint32_t base = static_cast<uint32_t>(first) + key;
  const uint32_t n = static_cast<uint32_t>(r);  // r <= kLowBlock
  if (stochastic) {
    bf16_bits<true>(x, out, n, base);
  } else {
    bf16_bits<false>(x, out, n, base);
  }
}

// float values of a block of T (float, BFloat16, Half); zero past r
template <typename T>
inline void load_block(const T* src, float* dst, int64_t r) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const auto* s = reinterpret_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < r; ++i) dst[i] = bits_float(static_cast<uint32_t>(s[i]) << 16);
  } else {
    for (int64_t i = 0; i < r; ++i) dst[i] = static_cast<float>(src[i]);
  }
  for (int64_t i = r; i < kLowBlock; ++i) dst[i] = 0.f;
}

// a block of T from float values: to nearest (bf16: stochastically with `sr`)
template <typename T>
inline void store_block(const float* src, T* dst, int64_t r, bool sr, uint32_t key,
                        int64_t first) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    store_bf16(src, reinterpret_cast<uint16_t*>(dst), r, sr, key, first);
  } else {
    for (int64_t i = 0; i < r; ++i) dst[i] = static_cast<T>(src[i]);
  }
}

// The 8-bit code (lowbit.encode_code / decode_code), M mantissa bits, a vector of lanes at a
// time: GNU vector types as wide as Vectorized<float> (one code for every vector width; the
// compiler emits the CPU's vector instructions, or several narrower ones).
constexpr int64_t kLanes = Vectorized<float>::size();
typedef float FLanes __attribute__((vector_size(4 * kLanes)));
typedef int32_t ILanes __attribute__((vector_size(4 * kLanes)));
typedef uint32_t ULanes __attribute__((vector_size(4 * kLanes)));

// Vectorized<float> <-> FLanes (a register move where both are the CPU's vector type)
ADAMHD_INLINE FLanes to_lanes(const Vectorized<float>& x) {
#if defined(CPU_CAPABILITY_AVX512)
  return (FLanes)static_cast<__m512>(x);
#elif defined(CPU_CAPABILITY_AVX2)
  return (FLanes)static_cast<__m256>(x);
#else
  FLanes y;
  x.store(&y);
  return y;
#endif
}

ADAMHD_INLINE Vectorized<float> from_lanes(const FLanes& y) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vectorized<float>((__m512)y);
#elif defined(CPU_CAPABILITY_AVX2)
  return Vectorized<float>((__m256)y);
#else
  return Vectorized<float>::loadu(&y);
#endif
}

// kLanes bytes widened to 32-bit lanes (SIGNED: sign-extended, so bit 31 is the byte's bit 7),
// and 32-bit lanes to their low bytes (one instruction each on AVX512; GCC's
// __builtin_convertvector does them a lane at a time)
template <bool SIGNED>
ADAMHD_INLINE ULanes widen_bytes(const uint8_t* src) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  return (ULanes)(SIGNED ? _mm512_cvtepi8_epi32(x) : _mm512_cvtepu8_epi32(x));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m128i x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
  return (ULanes)(SIGNED ? _mm256_cvtepi8_epi32(x) : _mm256_cvtepu8_epi32(x));
#else
  ULanes out;
  for (int64_t k = 0; k < kLanes; ++k) {
    out[k] = SIGNED ? static_cast<uint32_t>(static_cast<int32_t>(static_cast<int8_t>(src[k])))
                    : src[k];
  }
  return out;
#endif
}

ADAMHD_INLINE void narrow_bytes(const ILanes& c, uint8_t* dst) {
#if defined(CPU_CAPABILITY_AVX512)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8((__m512i)c));
#else
  for (int64_t k = 0; k < kLanes; ++k) dst[k] = static_cast<uint8_t>(c[k]);
#endif
}

// t (>= 0) rounded to the nearest integer, ties to even; NaN: an integer <= 0 whose low byte is
// 0 (AVX512: INT_MIN; else 0); t > 2**22: any value.
ADAMHD_INLINE ILanes round_even(const FLanes& t) {
#if defined(CPU_CAPABILITY_AVX512)
  return (ILanes)_mm512_cvt_roundps_epi32((__m512)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  constexpr float kRound = 8388608.0f;  // 2**23: (t + 2**23) - 2**23 rounds t in [0, 2**22] to even
  const FLanes r = (t + kRound) - kRound, zero = {};
  return __builtin_convertvector(r > zero ? r : zero, ILanes);
#endif
}

// The values of kLanes codes at `code` times `scale`: m (SIGNED: sign bit 7), or v, the square
// of the code's value (which is sqrt(v)'s).
template <int M, bool SIGNED>
ADAMHD_INLINE FLanes decode_lanes(const uint8_t* code, float scale) {
  constexpr float kSubStep = 1.0f / static_cast<float>(1 << (14 + M));
  const ULanes raw = widen_bytes<SIGNED>(code);
  ULanes c = raw;
  if constexpr (SIGNED) c &= 127u;
  const FLanes normal = (FLanes)((c + (112u << M)) << (23 - M));
  const FLanes sub = __builtin_convertvector((ILanes)c, FLanes) * kSubStep;
  const FLanes value = (c >= (1u << M) ? normal : sub) * scale;
  if constexpr (SIGNED) return (FLanes)((ULanes)value ^ (raw & 0x80000000u));
  return value * value;
}

// How a block's values are scaled for their code: by the reciprocal of the block's scale (its
// max|value|), or by division where the reciprocal overflows (as lowbit.py scales).
struct CodeScale {
  float safe;   // the scale, or 1 where it is 0 or NaN
  float inv;    // 1 / safe
  bool divide;  // 1 / safe is infinite
};

inline CodeScale code_scale(float scale) {
  const float safe = scale > 0.f ? scale : 1.f;
  return {safe, 1.f / safe, std::isinf(1.f / safe)};
}

// The codes of kLanes values at `val` (SIGNED: m; else sqrt(v)) to `code`: y = |value| scaled,
// in [0, 1]; normal codes from y's bits, rounded to nearest; below 2**-14 the subnormal steps.
template <int M, bool SIGNED>
ADAMHD_INLINE void encode_lanes(const float* val, const CodeScale& s, uint8_t* code) {
  constexpr float kMinNormal = 1.0f / 16384.0f;  // 2**-14
  constexpr float kSubScale = static_cast<float>(1 << (14 + M));
  constexpr int32_t kMax = 15 << M;
  FLanes value;
  std::memcpy(&value, val, sizeof(value));
  // |value| (sqrt(v) is >= 0 already, or NaN, which gets code 0 with either sign)
  const FLanes a = SIGNED ? (FLanes)((ULanes)value & 0x7FFFFFFFu) : value;
  const FLanes y = s.divide ? a / s.safe : a * s.inv;  // in [0, 1], or NaN
  const ILanes normal = (ILanes)((((ULanes)y) + (1u << (22 - M))) >> (23 - M)) - (112 << M);
  // normal (where taken) >= 1 << M; the subnormal code >= 0, or for NaN y (code 0)
  // round_even's NaN value
  ILanes c = y >= kMinNormal ? normal : round_even(y * kSubScale);
  c = c > kMax ? (ILanes{} + kMax) : c;
  if constexpr (SIGNED) c |= (ILanes)((((ULanes)value) >> 24) & 0x80u);
  narrow_bytes(c, code);
}

// What a low-bit job carries besides Job (Job::max_v points here: no amsgrad in this op)
struct LowExtra {
  int moment;         // LowMoment
  bool param_sr;      // bf16 parameters rounded stochastically
  float* m_scale;     // int8: one scale per block
  float* v_scale;
  int64_t position;   // the parameter's index in the optimizer (the noise's key)
  uint32_t key_m = 0, key_v = 0, key_p = 0;  // this step's keys
};

// bfloat16 or plain moments of a block to float buffers, and back
template <typename P>
inline void decode_moments(const Job& job, const LowExtra& x, int64_t b, int64_t r, float* m,
                           float* v) {
  if (x.moment == kMomentBF16) {
    load_block(static_cast<const c10::BFloat16*>(job.m) + b, m, r);
    load_block(static_cast<const c10::BFloat16*>(job.v) + b, v, r);
  } else {
    load_block(static_cast<const P*>(job.m) + b, m, r);
    load_block(static_cast<const P*>(job.v) + b, v, r);
  }
}

template <typename P>
inline void encode_moments(const Job& job, const LowExtra& x, int64_t b, int64_t r,
                           const float* m, const float* v) {
  if (x.moment == kMomentBF16) {
    store_bf16(m, static_cast<uint16_t*>(job.m) + b, r, true, x.key_m, b);
    store_bf16(v, static_cast<uint16_t*>(job.v) + b, r, true, x.key_v, b);
  } else {
    store_block(m, static_cast<P*>(job.m) + b, r, false, 0, b);
    store_block(v, static_cast<P*>(job.v) + b, r, false, 0, b);
  }
}

// sum|p| over [begin, end) of the float values of p, with sum_abs_range<float>'s blocking
template <typename P>
double lowbit_sum_abs(const Job& job, int64_t begin, int64_t end) {
  using OVec = Vectorized<float>;
  constexpr int64_t W = OVec::size();
  const auto* p = static_cast<const P*>(job.p);
  AbsSum<OVec> sum;
  alignas(64) float buf[W];
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    for (int64_t k = 0; k < W; ++k) buf[k] = static_cast<float>(p[i + k]);
    sum.add(OVec::loadu(buf));
  }
  sum.flush();
  for (; i < end; ++i) sum.total += std::abs(static_cast<double>(static_cast<float>(p[i])));
  return sum.total;
}

// Software prefetch of p and g of the block at `at` (the compute between the blocks' memory
// accesses otherwise leaves the memory idle: measured 1.3x faster on one thread).
constexpr int64_t kPrefetchBlocks = 4;

template <typename P>
inline void prefetch_ahead(const P* p, const P* g, const void* m, const void* v,
                           int64_t moment_size, int64_t at, int64_t end) {
  if (at >= end) return;
  const int64_t n = std::min(kLowBlock, end - at);
  const char* pc = reinterpret_cast<const char*>(p + at);
  const char* gc = reinterpret_cast<const char*>(g + at);
  for (int64_t o = 0; o < n * static_cast<int64_t>(sizeof(P)); o += 64) {
    __builtin_prefetch(pc + o, 1);
    __builtin_prefetch(gc + o, 0);
  }
  const char* mc = static_cast<const char*>(m) + at * moment_size;
  const char* vc = static_cast<const char*>(v) + at * moment_size;
  for (int64_t o = 0; o < n * moment_size; o += 64) {
    __builtin_prefetch(mc + o, 1);
    __builtin_prefetch(vc + o, 1);
  }
}

// sum|p| of the whole float vectors of the stored block p[b, b + r), added to `sum` in order
template <typename P>
inline void add_stored(AbsSum<Vectorized<float>>& sum, const P* p, int64_t b, int64_t r) {
  using OVec = Vectorized<float>;
  constexpr int64_t W = OVec::size();
  alignas(64) float buf[W];
  for (int64_t i = 0; i + W <= r; i += W) {
    for (int64_t k = 0; k < W; ++k) buf[k] = static_cast<float>(p[b + i + k]);
    sum.add(OVec::loadu(buf));
  }
}

// The lanes of `top` and the bits of x >= 0 (or NaN) lane by lane, as unsigned integers: the
// larger float for x >= 0; a NaN (sign cleared) above every number, so a NaN lane wins, as in
// torch's amax.
ADAMHD_INLINE ULanes max_bits(const ULanes& top, const Vectorized<float>& x) {
  const ULanes bits = (ULanes)to_lanes(x) & 0x7FFFFFFFu;
  return top > bits ? top : bits;
}

// The float of the largest lane of `top` (max_bits's)
inline float lane_max(const ULanes& top) {
  uint32_t out = 0;
  for (int64_t k = 0; k < kLanes; ++k) out = top[k] > out ? top[k] : out;
  return bits_float(out);
}

// excess(x, neg_d, d) bit for bit, by x86's plain max and min (two instructions; excess's
// NaN-propagating ones take eight), for thresholds from order_thresholds: those return their
// second operand where either is NaN, so a NaN x gives x - (a number) = x quieted, as excess's
// x - NaN does, and a NaN d gives the all-ones NaN that excess's max and min return.
inline Vectorized<float> excess_ordered(const Vectorized<float>& x,
                                        const Vectorized<float>& neg_d,
                                        const Vectorized<float>& d) {
#if defined(CPU_CAPABILITY_AVX512)
  return x - Vectorized<float>(_mm512_min_ps(_mm512_max_ps(x, neg_d), d));
#elif defined(CPU_CAPABILITY_AVX2)
  return x - Vectorized<float>(_mm256_min_ps(_mm256_max_ps(x, neg_d), d));
#else
  return excess(x, neg_d, d);
#endif
}

// The thresholds excess_ordered needs: a NaN d (and -d) as the all-ones NaN (x86 builds).
inline void order_thresholds(Consts<Vectorized<float>>& c) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  alignas(64) float d[Vectorized<float>::size()];
  c.d.store(d);
  if (std::isnan(d[0])) c.d = c.neg_d = Vectorized<float>(bits_float(0xFFFFFFFFu));
#endif
}

// adamhd_update<DECAY, false, true> (Adam's update, no amsgrad, no cautious decay), the same
// operations in the same order (bit for bit: tested against fused_step_ on working copies), with
// sqrt(v), which the update takes anyway, kept for v's 8-bit code: one square root per element
// instead of two (the divider is what the low-bit step is bound by on one thread).
template <int DECAY>
inline Vectorized<float> plain_update_root(Vectorized<float> p, Vectorized<float> g,
                                           Vectorized<float>& m, Vectorized<float>& v,
                                           Vectorized<float>& root,
                                           const Consts<Vectorized<float>>& c, const Flags& f) {
  using T = Vectorized<float>;
  if (f.maximize) g = T(0) - g;
  m = f.lerp_low ? at::vec::fmadd(c.weight1, g - m, m)
                 : at::vec::fmadd(c.weight1 - T(1), g - m, g);
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  if constexpr (DECAY == 1) p = p * c.one_minus_tau + excess_ordered(p, c.neg_d, c.d) * c.tau;
  root = v.sqrt();
  p = p + c.neg_step_size * m / (root / c.bc2_sqrt + c.eps);
  if constexpr (DECAY == 2) {
    const T q = p / c.one_plus_tau;
    p = q + excess_ordered(q, c.neg_d, c.d) * c.tau;
  }
  return p;
}

// The moments of a block in float buffers (bfloat16 or plain: decode_moments, encode_moments).
struct BufferedMoments {
  static constexpr bool kInt8 = false;
  float* m;
  float* v;
  ADAMHD_INLINE void load(int64_t i, Vectorized<float>& mv, Vectorized<float>& vv) const {
    mv = Vectorized<float>::loadu(m + i);
    vv = Vectorized<float>::loadu(v + i);
  }
  ADAMHD_INLINE void store(int64_t i, const Vectorized<float>& mv, const Vectorized<float>& vv,
             const Vectorized<float>&) const {
    mv.store(m + i);
    vv.store(v + i);
  }
};

// An int8 block after its step: m and sqrt(v), to be encoded to `m_code`, `v_code` (nullptr:
// none) with the block's scales: during the next block's step, a vector of lanes per vector of
// that step (the codec's integer work beside the step's divisions), or by finish_codes.
struct PendingCodes {
  alignas(64) float m[kLowBlock];
  alignas(64) float root[kLowBlock];
  uint8_t* m_code = nullptr;
  uint8_t* v_code = nullptr;
  CodeScale m_scale{}, v_scale{};
  int64_t r = 0;
};

ADAMHD_INLINE void encode_pending(const PendingCodes& q, int64_t i, uint8_t* m_code, uint8_t* v_code) {
  encode_lanes<3, true>(q.m + i, q.m_scale, m_code + i);
  encode_lanes<4, false>(q.root + i, q.v_scale, v_code + i);
}

// All of q's codes (a short block's through a padded copy); then nothing is pending.
inline void finish_codes(PendingCodes& q) {
  if (q.m_code == nullptr) return;
  alignas(64) uint8_t m[kLowBlock], v[kLowBlock];
  const bool whole = q.r == kLowBlock;
  for (int64_t i = 0; i < kLowBlock; i += kLanes) {
    encode_pending(q, i, whole ? q.m_code : m, whole ? q.v_code : v);
  }
  if (!whole) {
    std::memcpy(q.m_code, m, q.r);
    std::memcpy(q.v_code, v, q.r);
  }
  q.m_code = q.v_code = nullptr;
}

// int8 moments of a block: decoded a vector at a time from the codes at `m_code`, `v_code` (a
// short block's: zero-padded copies; its lanes past r are 0), with the scales the block had
// before this step; after the step, m and sqrt(v) go to `now`, and the same lanes of `prev` (the
// previous block, if pending) are encoded.
struct Int8Moments {
  static constexpr bool kInt8 = true;
  const uint8_t* m_code;
  const uint8_t* v_code;
  float m_scale, v_scale;
  int64_t r;
  PendingCodes* now;
  const PendingCodes* prev;
  ADAMHD_INLINE void load(int64_t i, Vectorized<float>& mv, Vectorized<float>& vv) const {
    mv = from_lanes(decode_lanes<3, true>(m_code + i, m_scale));
    vv = from_lanes(decode_lanes<4, false>(v_code + i, v_scale));
    if (i + kLanes > r) {
      const int64_t keep = std::max<int64_t>(r - i, 0);
      mv = Vectorized<float>::set(Vectorized<float>(0.f), mv, keep);
      vv = Vectorized<float>::set(Vectorized<float>(0.f), vv, keep);
    }
  }
  ADAMHD_INLINE void store(int64_t i, const Vectorized<float>& mv, const Vectorized<float>&,
             const Vectorized<float>& root) const {
    mv.store(now->m + i);
    root.store(now->root + i);
    if (prev != nullptr) encode_pending(*prev, i, prev->m_code, prev->v_code);
  }
};

// The float step of one block: p, g from `p_in`, `g_in` (float pointers: the tensor itself for
// a whole float32 block, else the block's float buffers), m and v from `mo` and back to it; the
// new p to `p_out`; the unscaled g back to `g_out` (nullptr: not stored here). Adds the stored
// p to `sum`; int8: the block's max|m| and max sqrt(v) to `maxes`.
template <int DECAY, bool PLAIN, typename Moments>
ADAMHD_INLINE void step_block(const float* p_in, float* g_in, float* p_out, float* g_out,
                       const Moments& mo, const Consts<Vectorized<float>>& cv, const Flags& f,
                       AbsSum<Vectorized<float>>* sum, float* maxes) {
  using OVec = Vectorized<float>;
  constexpr int64_t W = OVec::size();
  OVec dummy(0.f);
  ULanes m_max = {}, r_max = {};  // max_bits of |m| and sqrt(v) (lanes past a short block: 0)
  AbsSum<OVec> s = sum != nullptr ? *sum : AbsSum<OVec>();  // in registers, not behind `sum`
  for (int64_t i = 0; i < kLowBlock; i += W) {
    OVec gv = OVec::loadu(g_in + i);
    if (f.scaled) {
      gv = gv / cv.grad_scale;
      if (g_out != nullptr) gv.store(g_out + i);
    }
    OVec mv, vv, root(0.f);
    mo.load(i, mv, vv);
    OVec pv;
    if constexpr (PLAIN) {
      pv = plain_update_root<DECAY>(OVec::loadu(p_in + i), gv, mv, vv, root, cv, f);
    } else {
      pv = adamhd_update<DECAY, false, false>(OVec::loadu(p_in + i), gv, mv, vv, dummy, cv, f);
      if constexpr (Moments::kInt8) root = vv.sqrt();
    }
    pv.store(p_out + i);
    mo.store(i, mv, vv, root);
    if constexpr (Moments::kInt8) {
      m_max = max_bits(m_max, mv);
      r_max = max_bits(r_max, root);
    }
    if (sum != nullptr) s.add(pv);
  }
  if (sum != nullptr) *sum = s;
  if constexpr (Moments::kInt8) {
    maxes[0] = lane_max(m_max);
    maxes[1] = lane_max(r_max);
  }
}

// The step of block [b, b + r) of p and g with moments `mo`: a whole float32 block in place,
// otherwise through the float buffers pf, gf.
template <typename P, int DECAY, bool PLAIN, typename Moments>
inline void step_params(const Job& job, int64_t b, int64_t r, const Moments& mo, float* pf,
                        float* gf, const Consts<Vectorized<float>>& cv,
                        AbsSum<Vectorized<float>>* sum, float* maxes) {
  const LowExtra& x = *static_cast<const LowExtra*>(job.max_v);
  auto* p = static_cast<P*>(job.p);
  auto* g = static_cast<P*>(job.g);
  if constexpr (std::is_same_v<P, float>) {
    if (r == kLowBlock) {  // the trip counts are constants here
      step_block<DECAY, PLAIN>(p + b, g + b, p + b, g + b, mo, cv, job.f, sum, maxes);
      return;
    }
  }
  load_block(p + b, pf, r);
  load_block(g + b, gf, r);
  step_block<DECAY, PLAIN>(pf, gf, pf, gf, mo, cv, job.f, nullptr, maxes);
  if (job.f.scaled) store_block(gf, g + b, r, false, 0, b);
  store_block(pf, p + b, r, x.param_sr && std::is_same_v<P, c10::BFloat16>, x.key_p, b);
  if (sum != nullptr) add_stored(*sum, p, b, r);
}

// The codes of block [b, b + r) of int8 moments: the tensors' own, or for a short block
// zero-padded copies in m_pad, v_pad.
inline std::pair<const uint8_t*, const uint8_t*> block_codes(const Job& job, int64_t b, int64_t r,
                                                             uint8_t* m_pad, uint8_t* v_pad) {
  const auto* m = static_cast<const uint8_t*>(job.m) + b;
  const auto* v = static_cast<const uint8_t*>(job.v) + b;
  if (r == kLowBlock) return {m, v};
  std::memset(m_pad, 0, kLowBlock);
  std::memset(v_pad, 0, kLowBlock);
  std::memcpy(m_pad, m, r);
  std::memcpy(v_pad, v, r);
  return {m_pad, v_pad};
}

// The step over the elements [begin, end) of one tensor (begin a multiple of kLowBlock); returns
// sum|p_new| (0 if !want_sum), with lowbit_sum_abs's blocking. int8 moments: block b's codes are
// written during block b + 1's step (software pipelining: see PendingCodes), the last block's
// at the end.
template <typename P, int DECAY, bool PLAIN>
double lowbit_range(const Job& job, int64_t begin, int64_t end, bool want_sum) {
  using OVec = Vectorized<float>;
  constexpr int64_t W = OVec::size();
  static_assert(kLowBlock % W == 0, "a block is whole vectors");
  const LowExtra& x = *static_cast<const LowExtra*>(job.max_v);
  const auto* p = static_cast<const P*>(job.p);
  Consts<OVec> cv = broadcast<OVec>(broadcast<float>(job.c));
  if constexpr (PLAIN) order_thresholds(cv);  // for plain_update_root's excess_ordered
  alignas(64) float pf[kLowBlock], gf[kLowBlock], mf[kLowBlock], vf[kLowBlock];
  alignas(64) uint8_t m_pad[kLowBlock], v_pad[kLowBlock];
  PendingCodes pending[2];
  PendingCodes* prev = nullptr;
  const bool int8 = x.moment == kMomentInt8;
  const int64_t moment_size = int8 ? 1 : (x.moment == kMomentBF16 ? 2 : sizeof(P));
  float maxes[2];  // int8: this block's max|m| and max sqrt(v), from the step
  AbsSum<OVec> sum;
  AbsSum<OVec>* to_sum = want_sum ? &sum : nullptr;
  for (int64_t b = begin; b < end; b += kLowBlock) {
    const int64_t r = std::min(kLowBlock, end - b);
    prefetch_ahead(p, static_cast<const P*>(job.g), job.m, job.v, moment_size,
                   b + kPrefetchBlocks * kLowBlock, end);
    if (!int8) {
      decode_moments<P>(job, x, b, r, mf, vf);
      step_params<P, DECAY, PLAIN>(job, b, r, BufferedMoments{mf, vf}, pf, gf, cv, to_sum, maxes);
      encode_moments<P>(job, x, b, r, mf, vf);
      continue;
    }
    PendingCodes& now = pending[(b - begin) / kLowBlock % 2];
    const auto [m_code, v_code] = block_codes(job, b, r, m_pad, v_pad);
    const Int8Moments mo{m_code, v_code, x.m_scale[b / kLowBlock], x.v_scale[b / kLowBlock],
                         r, &now, prev};
    step_params<P, DECAY, PLAIN>(job, b, r, mo, pf, gf, cv, to_sum, maxes);
    x.m_scale[b / kLowBlock] = maxes[0];
    x.v_scale[b / kLowBlock] = maxes[1];
    now.m_scale = code_scale(maxes[0]);
    now.v_scale = code_scale(maxes[1]);
    now.m_code = static_cast<uint8_t*>(job.m) + b;
    now.v_code = static_cast<uint8_t*>(job.v) + b;
    now.r = r;
    prev = &now;
  }
  if (prev != nullptr) finish_codes(*prev);
  if (!want_sum) return 0.0;
  sum.flush();
  for (int64_t i = begin + (end - begin) / W * W; i < end; ++i) {
    sum.total += std::abs(static_cast<double>(static_cast<float>(p[i])));
  }
  return sum.total;
}

template <typename P>
void pick_lowbit(Job& job, int64_t decay_kind, bool plain) {
  job.abs_fn = &lowbit_sum_abs<P>;
#define ADAMHD_LOWBIT_CASE(D)                                                          \
  if (decay_kind == D) job.fn = plain ? &lowbit_range<P, D, true> : &lowbit_range<P, D, false>;
  ADAMHD_LOWBIT_CASE(0)
  ADAMHD_LOWBIT_CASE(1)
  ADAMHD_LOWBIT_CASE(2)
#undef ADAMHD_LOWBIT_CASE
}

bool lowbit_param_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// The moment storage of parameter i (checked), all before anything changes.
int check_lowbit_tensor(size_t i, const at::Tensor& p, const at::Tensor& g, const at::Tensor& m,
                        const at::Tensor& v) {
  TORCH_CHECK(p.device().is_cpu() && !p.is_sparse() && lowbit_param_dtype(p.scalar_type()),
              "adamhd fused low-bit step: parameter ", i, " is ", p.scalar_type(), " on ",
              p.device(), "; the kernel takes dense float32, bfloat16 or float16 CPU tensors");
  TORCH_CHECK(g.device().is_cpu() && !g.is_sparse() && g.scalar_type() == p.scalar_type() &&
                  g.sizes() == p.sizes(),
              "adamhd fused low-bit step: the gradient of parameter ", i,
              " must be a dense CPU tensor of its dtype and shape");
  const at::ScalarType t = m.scalar_type();
  TORCH_CHECK(t == at::kByte || t == at::kBFloat16 || t == p.scalar_type(),
              "adamhd fused low-bit step: the moments of parameter ", i, " are ", t,
              "; expected uint8 codes, bfloat16 or the parameter's dtype ", p.scalar_type());
  for (const at::Tensor* s : {&m, &v}) {
    TORCH_CHECK(s->device().is_cpu() && s->scalar_type() == t && s->sizes() == p.sizes() &&
                    s->is_contiguous(),
                "adamhd fused low-bit step: exp_avg and exp_avg_sq of parameter ", i,
                " must be contiguous CPU tensors of one dtype and of its shape ", p.sizes());
  }
  if (t == at::kByte) return kMomentInt8;
  return t == at::kBFloat16 ? kMomentBF16 : kMomentPlain;
}

void check_lowbit_scale(size_t i, const at::Tensor& s, int64_t numel) {
  TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kFloat && s.is_contiguous() &&
                  s.numel() == (numel + kLowBlock - 1) / kLowBlock,
              "adamhd fused low-bit step: the scales of parameter ", i, " must be ",
              (numel + kLowBlock - 1) / kLowBlock, " contiguous float32 CPU values, got ",
              s.scalar_type(), " with ", s.numel());
}


// Per-tensor constants of the step, as fused_step_ sets them (Adam's update, no amsgrad), and
// this step's noise keys.
void lowbit_constants(Job& job, LowExtra& x, double step, double d, double lr, double beta1,
                      double beta2, double eps, double tau, double scale, bool maximize,
                      bool cautious, uint32_t seed) {
  const double bc1 = 1.0 - std::pow(beta1, step);
  const double weight1 = 1.0 - beta1;
  const double bc2_sqrt = std::pow(1.0 - std::pow(beta2, step), 0.5);
  job.c = Consts<double>{weight1,  beta2, 1.0 - beta2, -(lr / bc1), bc2_sqrt, eps, tau,
                         1.0 - tau, 1.0 + tau, d, -d, scale > 0 ? scale : 1.0, -lr, bc1,
                         1.0, 1.0, 1.0 / bc1, 1.0 / bc2_sqrt, 1.0};
  job.f = Flags{weight1 < 0.5, maximize, scale > 0, kAdam, cautious};
  const int64_t count = std::isfinite(step) ? static_cast<int64_t>(step) : 0;
  x.key_m = low_rounding_key(seed, x.position, 0, count);
  x.key_v = low_rounding_key(seed, x.position, 1, count);
  x.key_p = low_rounding_key(seed, x.position, 2, count);
}

void lowbit_run(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList steps, at::TensorList mus,
                at::IntArrayRef positions, std::vector<LowExtra>& extra, double scale, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t decay_kind,
                double delta, double delta_scale, double delta_beta, bool advance, bool maximize,
                bool cautious, uint32_t seed, bool param_sr) {
  const size_t n = params.size();
  const double tau = lr * weight_decay;
  std::vector<at::Tensor> p_work(n), g_work(n);
  std::vector<Job> jobs(n);
  std::vector<int64_t> all;
  for (size_t i = 0; i < n; ++i) {
    p_work[i] = params[i].contiguous();
    g_work[i] = grads[i].contiguous();
    Job& job = jobs[i];
    job.p = p_work[i].data_ptr();
    job.g = g_work[i].data_ptr();
    job.m = exp_avgs[i].data_ptr();
    job.v = exp_avg_sqs[i].data_ptr();
    extra[i].position = positions[i];
    extra[i].param_sr = param_sr;
    job.max_v = &extra[i];
    job.numel = params[i].numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, params[i].scalar_type(),
                                    "adamhd_lowbit_pick", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) {
        pick_lowbit<scalar_t>(job, decay_kind, !cautious);
      }
    });
    all.push_back(static_cast<int64_t>(i));
  }
  StepStats stats(jobs, all, params, steps, mus, delta, delta_scale, delta_beta, advance);
  auto set_constants = [&](int64_t i) {
    const auto [step, d] = stats.next(jobs[i], i);
    lowbit_constants(jobs[i], extra[i], step, d, lr, beta1, beta2, eps, tau, scale, maximize,
                     cautious, seed);
  };
  stats.set_cached(n, set_constants);
  stats.run(jobs, all, set_constants);
  for (size_t i = 0; i < n; ++i) {
    if (!p_work[i].is_same(params[i])) params[i].copy_(p_work[i]);
    if (scale > 0 && !g_work[i].is_same(grads[i])) grads[i].copy_(g_work[i]);
    if (!params[i].is_inference()) torch::autograd::impl::bump_version(params[i]);
  }
  stats.finish(jobs, all, params);
}

}  // namespace

// One fused low-bit AdamHD step over lists of CPU tensors, in place (see this section's top; the
// other arguments as fused_step_'s). positions: each parameter's index in the optimizer; seed:
// rounding_seed; param_sr: bf16_stochastic_round.
void fused_lowbit_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList exp_avg_scales,
                        at::TensorList exp_avg_sq_scales, at::TensorList steps, at::TensorList mus,
                        at::IntArrayRef positions, const std::optional<at::Tensor>& lr_tensor,
                        const std::optional<at::Tensor>& grad_scale,
                        const std::optional<at::Tensor>& found_inf, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t decay_kind,
                        double delta, double delta_scale, double delta_beta, bool adaptive,
                        bool maximize, bool cautious, int64_t seed, bool param_sr) {
  const size_t n = params.size();
  TORCH_CHECK(decay_kind >= 0 && decay_kind <= 2, "adamhd fused low-bit step: bad decay kind ",
              decay_kind);
  TORCH_CHECK(seed >= 0 && seed <= 0xFFFFFFFFLL,
              "adamhd fused low-bit step: seed must be in [0, 2**32), got ", seed);
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n && positions.size() == n,
              "adamhd fused low-bit step: the lists of params, grads, exp_avgs, exp_avg_sqs, "
              "steps and positions differ in length");
  const bool advance = adaptive && decay_kind != 0;
  TORCH_CHECK(!advance || mus.size() == n,
              "adamhd fused low-bit step: the adaptive threshold needs one delta_mu per parameter");
  std::vector<LowExtra> extra(n);
  size_t n_int8 = 0;
  for (size_t i = 0; i < n; ++i) {
    extra[i].moment = check_lowbit_tensor(i, params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]);
    TORCH_CHECK(steps[i].device().is_cpu() && steps[i].numel() == 1,
                "adamhd fused low-bit step: the step of parameter ", i,
                " must be a 1-element CPU tensor");
    if (advance) {
      TORCH_CHECK(mus[i].device().is_cpu() && mus[i].numel() == 1 &&
                      (mus[i].scalar_type() == at::kFloat || mus[i].scalar_type() == at::kDouble),
                  "adamhd fused low-bit step: delta_mu of parameter ", i,
                  " must be a 1-element float32 or float64 CPU tensor");
    }
    if (extra[i].moment != kMomentInt8) continue;
    TORCH_CHECK(n_int8 < exp_avg_scales.size() && n_int8 < exp_avg_sq_scales.size(),
                "adamhd fused low-bit step: one exp_avg_scale and exp_avg_sq_scale per uint8 "
                "moment are needed");
    check_lowbit_scale(i, exp_avg_scales[n_int8], params[i].numel());
    check_lowbit_scale(i, exp_avg_sq_scales[n_int8], params[i].numel());
    extra[i].m_scale = exp_avg_scales[n_int8].data_ptr<float>();
    extra[i].v_scale = exp_avg_sq_scales[n_int8].data_ptr<float>();
    ++n_int8;
  }
  TORCH_CHECK(n_int8 == exp_avg_scales.size() && n_int8 == exp_avg_sq_scales.size(),
              "adamhd fused low-bit step: ", exp_avg_scales.size(), " scales for ", n_int8,
              " uint8 moments");
  if (scalar_of(found_inf, 0.0) != 0.0) return;  // GradScaler found inf/nan: change nothing
  lowbit_run(params, grads, exp_avgs, exp_avg_sqs, steps, mus, positions, extra,
             scalar_of(grad_scale, 0.0), scalar_of(lr_tensor, lr), beta1, beta2, eps,
             weight_decay, decay_kind, delta, delta_scale, delta_beta, advance, maximize,
             cautious, static_cast<uint32_t>(seed), param_sr);
}

TORCH_LIBRARY(adamhd, m) {
  m.def(
      "fused_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] steps, "
      "Tensor(g!)[] mus, Tensor? lr_tensor, Tensor? grad_scale, Tensor? found_inf, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, int decay_kind, float delta, "
      "float delta_scale, float delta_beta, bool adaptive, bool amsgrad, bool maximize, "
      "int update_kind, float update_a, float update_b, bool cautious, "
      "Tensor(h!)[] prev_grads, Tensor(i!)[] adanorm_es, bool cautious_update, "
      "bool trust_ratio, bool adanorm, bool diffgrad, float adanorm_gamma, "
      "float cautious_floor) -> ()");
  m.def(
      "decay_(Tensor(a!)[] params, Tensor[] p_ts, Tensor(b!)[] mus, Tensor[] ds, "
      "Tensor? tau_tensor, float tau, int form, float delta, float delta_scale, "
      "float delta_beta, bool adaptive, bool cautious) -> ()");
  m.def(  // issue 19: low-bit moments (spec.LOWBIT_SCHEMA)
      "fused_lowbit_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] exp_avg_scales, Tensor(f!)[] exp_avg_sq_scales, "
      "Tensor(g!)[] steps, Tensor(h!)[] mus, int[] positions, Tensor? lr_tensor, "
      "Tensor? grad_scale, Tensor? found_inf, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, int decay_kind, float delta, float delta_scale, float delta_beta, "
      "bool adaptive, bool maximize, bool cautious, int seed, bool param_sr) -> ()");
}

TORCH_LIBRARY_IMPL(adamhd, CPU, m) {
  m.impl("fused_step_", &fused_step_);
  m.impl("decay_", &decay_);
  m.impl("fused_lowbit_step_", &fused_lowbit_step_);
}

// The float vector forms of softplus_beta and atan2 (x >= 0) on float32 tensors (the scalar form
// on a tail shorter than a vector): for the tests of their error bounds.
at::Tensor vector_softplus(const at::Tensor& x, double beta, double threshold) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "vector_softplus takes float32");
  at::Tensor in = x.contiguous(), out = at::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  using V = Vectorized<float>;
  const float b = static_cast<float>(beta), ib = static_cast<float>(1.0 / beta);
  const float th = static_cast<float>(threshold);
  int64_t i = 0;
  for (; i + V::size() <= in.numel(); i += V::size()) {
    vsoftplus(V::loadu(src + i), V(b), V(ib), V(th)).store(dst + i);
  }
  for (; i < in.numel(); ++i) dst[i] = vsoftplus(src[i], b, ib, th);
  return out;
}

at::Tensor vector_atan2(const at::Tensor& y, const at::Tensor& x) {
  TORCH_CHECK(y.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat &&
                  y.sizes() == x.sizes(), "vector_atan2 takes two float32 tensors of one shape");
  at::Tensor a = y.contiguous(), c = x.contiguous(), out = at::empty_like(a);
  const float *ya = a.data_ptr<float>(), *xa = c.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  using V = Vectorized<float>;
  int64_t i = 0;
  for (; i + V::size() <= a.numel(); i += V::size()) {
    atan2_nonneg_x(V::loadu(ya + i), V::loadu(xa + i)).store(dst + i);
  }
  for (; i < a.numel(); ++i) dst[i] = atan2_nonneg_x(ya[i], xa[i]);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("vector_softplus", &vector_softplus, "the kernel's softplus_beta (x >= 0), for tests");
  m.def("vector_atan2", &vector_atan2, "the kernel's atan2 (x >= 0), for tests");
  m.def("abs_sums", &abs_sums, "sum|p| per tensor, with the fused step's blocking");
  m.def("cached_abs_sums", &cached_abs_sums, "the cached sum|p| per tensor (NaN if none)");
  m.def("forget", &forget, "drop cached sums");
}
