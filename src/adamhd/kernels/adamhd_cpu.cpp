// Fused AdamHD step on CPU: one pass over p, g, m, v (and max_v for amsgrad) per tensor.
//
// The math is the one of adamhd.functional/_single_tensor_adamhd and adamhd.decay, in the same
// order of operations, computed in float (double for float64 tensors) and rounded once on store:
//
//   explicit decay:  p = p*(1 - tau) + tau*(p - clip(p, -d, d))          (before the Adam update)
//   Adam:            m = lerp(m, g, 1 - beta1);  v = v*beta2 + (1 - beta2)*g*g
//                    p = p + (-step_size) * m / (sqrt(v)/bc2_sqrt + eps)
//   proximal decay:  x = p/(1 + tau);  p = x + tau*(x - clip(x, -d, d))  (after it)
//
// While it writes the new p, the kernel accumulates sum|p_new| (in double across blocks), which the
// Python side keeps as the next step's mean|p| for the adaptive threshold: no extra pass.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <type_traits>
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
  T one_minus_w1;   // 1 - weight1, as torch.lerp computes it
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
};

template <typename T, typename S>
Consts<T> broadcast(const Consts<S>& c) {
  return Consts<T>{T(c.weight1), T(c.one_minus_w1),    T(c.beta2),   T(c.one_minus_beta2),
                   T(c.neg_step_size), T(c.bc2_sqrt),  T(c.eps),     T(c.tau),
                   T(c.one_minus_tau), T(c.one_plus_tau), T(c.d),    T(c.neg_d),
                   T(c.grad_scale)};
}

struct Flags {
  bool lerp_low;  // weight1 < 0.5: torch.lerp's "start + w*(end - start)" branch
  bool maximize;
  bool scaled;    // divide g by grad_scale
};

// One element (or one vector of elements): returns the new p; updates m, v, max_v in place.
// DECAY: 0 none, 1 explicit, 2 proximal.
template <int DECAY, bool AMSGRAD, typename T>
inline T adamhd_update(T p, T g, T& m, T& v, T& max_v, const Consts<T>& c, const Flags& f) {
  if (f.maximize) g = T(0) - g;
  if (f.scaled) g = g / c.grad_scale;
  if constexpr (DECAY == 1) {
    p = p * c.one_minus_tau + excess(p, c.neg_d, c.d) * c.tau;
  }
  // as torch.lerp: fmadd(w, g - m, m) for small w, else fmadd(w - 1, g - m, g)
  if constexpr (std::is_floating_point_v<T>) {
    m = f.lerp_low ? std::fma(c.weight1, g - m, m) : std::fma(c.weight1 - T(1), g - m, g);
  } else {
    m = f.lerp_low ? at::vec::fmadd(c.weight1, g - m, m)
                   : at::vec::fmadd(c.weight1 - T(1), g - m, g);
  }
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  T denom;
  if constexpr (AMSGRAD) {
    max_v = vmaximum(max_v, v);
    denom = vsqrt(max_v) / c.bc2_sqrt + c.eps;
  } else {
    denom = vsqrt(v) / c.bc2_sqrt + c.eps;
  }
  p = p + c.neg_step_size * m / denom;  // as torch.addcdiv: self + (value * t1) / t2
  if constexpr (DECAY == 2) {
    T x = p / c.one_plus_tau;
    p = x + excess(x, c.neg_d, c.d) * c.tau;
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

// The elements [begin, end) of one tensor; returns sum|p_new| over them (0 if !want_sum).
template <typename scalar_t, int DECAY, bool AMSGRAD>
double run_range(scalar_t* p, const scalar_t* g, scalar_t* m, scalar_t* v, scalar_t* max_v,
                 int64_t begin, int64_t end, const Consts<at::opmath_type<scalar_t>>& cs,
                 const Flags& f, bool want_sum) {
  using opmath_t = at::opmath_type<scalar_t>;
  using OVec = Vectorized<opmath_t>;
  const Consts<OVec> cv = broadcast<OVec>(cs);
  double total = 0.0;
  OVec acc(0);
  int64_t in_acc = 0;
  int64_t i = begin;
  opmath_t dummy_max = 0;

  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    constexpr int64_t W = OVec::size();
    OVec mv_dummy(0);
    for (; i + W <= end; i += W) {
      OVec pv = OVec::loadu(p + i), gv = OVec::loadu(g + i);
      OVec mv = OVec::loadu(m + i), vv = OVec::loadu(v + i);
      OVec xv = AMSGRAD ? OVec::loadu(max_v + i) : mv_dummy;
      pv = adamhd_update<DECAY, AMSGRAD>(pv, gv, mv, vv, xv, cv, f);
      pv.store(p + i);
      mv.store(m + i);
      vv.store(v + i);
      if constexpr (AMSGRAD) xv.store(max_v + i);
      if (want_sum) {
        acc = acc + pv.abs();
        if (++in_acc == kSumBlock) {
          total += hsum(acc);
          acc = OVec(0);
          in_acc = 0;
        }
      }
    }
  } else {
    using SVec = Vectorized<scalar_t>;
    constexpr int64_t W = SVec::size();  // two float vectors
    OVec mv_dummy(0);
    for (; i + W <= end; i += W) {
      auto [p0, p1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(p + i));
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(g + i));
      auto [m0, m1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(m + i));
      auto [v0, v1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(v + i));
      OVec x0 = mv_dummy, x1 = mv_dummy;
      if constexpr (AMSGRAD) {
        std::tie(x0, x1) = at::vec::convert_to_float<scalar_t>(SVec::loadu(max_v + i));
      }
      p0 = adamhd_update<DECAY, AMSGRAD>(p0, g0, m0, v0, x0, cv, f);
      p1 = adamhd_update<DECAY, AMSGRAD>(p1, g1, m1, v1, x1, cv, f);
      SVec pr = at::vec::convert_from_float<scalar_t>(p0, p1);
      pr.store(p + i);
      at::vec::convert_from_float<scalar_t>(m0, m1).store(m + i);
      at::vec::convert_from_float<scalar_t>(v0, v1).store(v + i);
      if constexpr (AMSGRAD) at::vec::convert_from_float<scalar_t>(x0, x1).store(max_v + i);
      if (want_sum) {
        // sum the stored (rounded) values: that is what the next step reads
        auto [r0, r1] = at::vec::convert_to_float<scalar_t>(pr);
        acc = acc + r0.abs() + r1.abs();
        if (++in_acc == kSumBlock) {
          total += hsum(acc);
          acc = OVec(0);
          in_acc = 0;
        }
      }
    }
  }
  if (want_sum) total += hsum(acc);

  // scalar tail, same math
  for (; i < end; ++i) {
    opmath_t pv = static_cast<opmath_t>(p[i]), gv = static_cast<opmath_t>(g[i]);
    opmath_t mv = static_cast<opmath_t>(m[i]), vv = static_cast<opmath_t>(v[i]);
    opmath_t xv = AMSGRAD ? static_cast<opmath_t>(max_v[i]) : dummy_max;
    pv = adamhd_update<DECAY, AMSGRAD>(pv, gv, mv, vv, xv, cs, f);
    p[i] = static_cast<scalar_t>(pv);
    m[i] = static_cast<scalar_t>(mv);
    v[i] = static_cast<scalar_t>(vv);
    if constexpr (AMSGRAD) max_v[i] = static_cast<scalar_t>(xv);
    if (want_sum) total += std::abs(static_cast<double>(p[i]));
  }
  return total;
}

constexpr int64_t kGrain = 32768;

// sum|p| over [begin, end), with exactly the blocking of run_range, so that a value recomputed
// here equals, bit for bit, the one the fused step returned for the same p.
template <typename scalar_t>
double sum_abs_range(const scalar_t* p, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using OVec = Vectorized<opmath_t>;
  double total = 0.0;
  OVec acc(0);
  int64_t in_acc = 0;
  int64_t i = begin;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    constexpr int64_t W = OVec::size();
    for (; i + W <= end; i += W) {
      acc = acc + OVec::loadu(p + i).abs();
      if (++in_acc == kSumBlock) {
        total += hsum(acc);
        acc = OVec(0);
        in_acc = 0;
      }
    }
  } else {
    using SVec = Vectorized<scalar_t>;
    constexpr int64_t W = SVec::size();
    for (; i + W <= end; i += W) {
      auto [r0, r1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(p + i));
      acc = acc + r0.abs() + r1.abs();
      if (++in_acc == kSumBlock) {
        total += hsum(acc);
        acc = OVec(0);
        in_acc = 0;
      }
    }
  }
  total += hsum(acc);
  for (; i < end; ++i) total += std::abs(static_cast<double>(p[i]));
  return total;
}

template <typename scalar_t, int DECAY, bool AMSGRAD>
double run_tensor(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m,
                  const at::Tensor& v, const at::Tensor* max_v,
                  const Consts<at::opmath_type<scalar_t>>& cs, const Flags& f, bool want_sum) {
  scalar_t* pp = p.data_ptr<scalar_t>();
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  scalar_t* mp = m.data_ptr<scalar_t>();
  scalar_t* vp = v.data_ptr<scalar_t>();
  scalar_t* xp = AMSGRAD ? max_v->data_ptr<scalar_t>() : nullptr;
  return at::parallel_reduce(
      0, p.numel(), kGrain, 0.0,
      [&](int64_t b, int64_t e, double ident) {
        return ident + run_range<scalar_t, DECAY, AMSGRAD>(pp, gp, mp, vp, xp, b, e, cs, f,
                                                            want_sum);
      },
      [](double a, double b) { return a + b; });
}

template <typename scalar_t>
double dispatch_tensor(int64_t decay_kind, bool amsgrad, const at::Tensor& p,
                       const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                       const at::Tensor* max_v, const Consts<at::opmath_type<scalar_t>>& cs,
                       const Flags& f, bool want_sum) {
#define ADAMHD_CASE(D, A)                                                            \
  if (decay_kind == D && amsgrad == A)                                               \
    return run_tensor<scalar_t, D, A>(p, g, m, v, max_v, cs, f, want_sum);
  ADAMHD_CASE(0, false)
  ADAMHD_CASE(1, false)
  ADAMHD_CASE(2, false)
  ADAMHD_CASE(0, true)
  ADAMHD_CASE(1, true)
  ADAMHD_CASE(2, true)
#undef ADAMHD_CASE
  TORCH_CHECK(false, "adamhd: bad decay kind ", decay_kind);
}

bool same_dense_layout(const at::Tensor& p, const std::vector<const at::Tensor*>& others) {
  if (!p.is_non_overlapping_and_dense()) return false;
  for (const at::Tensor* t : others) {
    if (t->sizes() != p.sizes() || t->strides() != p.strides()) return false;
  }
  return true;
}

double read_step_and_increment(const at::Tensor& step) {
  TORCH_CHECK(step.device().is_cpu() && step.numel() == 1,
              "adamhd: the fused CPU kernel needs 1-element CPU step tensors");
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

// mu <- lerp(mu, a, 1 - beta) in mu's dtype; returns d = scale * mu, as adamhd.decay does.
double advance_threshold(const at::Tensor& mu, double abs_mean, double beta, double scale) {
  TORCH_CHECK(mu.device().is_cpu() && mu.numel() == 1, "adamhd: delta_mu must be a CPU scalar");
  if (mu.scalar_type() == at::kFloat) {
    float* mp = mu.data_ptr<float>();
    const float w = static_cast<float>(1.0 - beta);
    const float a = static_cast<float>(abs_mean);
    *mp = w < 0.5f ? *mp + w * (a - *mp) : a - (a - *mp) * (1.0f - w);
    return static_cast<double>(*mp * static_cast<float>(scale));
  }
  TORCH_CHECK(mu.scalar_type() == at::kDouble, "adamhd: delta_mu must be float32 or float64");
  double* mp = mu.data_ptr<double>();
  const double w = 1.0 - beta;
  *mp = w < 0.5 ? *mp + w * (abs_mean - *mp) : abs_mean - (abs_mean - *mp) * (1.0 - w);
  return *mp * scale;
}

}  // namespace

// One fused AdamHD step over lists of CPU tensors. Returns sum|p_new| per tensor (float64), or an
// empty tensor when want_sums is false. abs_means: this step's mean|p| per tensor (adaptive delta
// only, else empty). decay_kind: 0 none (weight_decay == 0), 1 explicit, 2 proximal.
at::Tensor fused_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                      const std::vector<at::Tensor>& exp_avgs,
                      const std::vector<at::Tensor>& exp_avg_sqs,
                      const std::vector<at::Tensor>& max_exp_avg_sqs,
                      const std::vector<at::Tensor>& steps, const std::vector<at::Tensor>& mus,
                      const std::vector<double>& abs_means, double lr, double beta1, double beta2,
                      double eps, double weight_decay, int64_t decay_kind, double delta,
                      double delta_scale, double delta_beta, bool adaptive, bool amsgrad,
                      bool maximize, double grad_scale, bool want_sums) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n,
              "adamhd: list lengths differ");
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs.size() == n, "adamhd: max_exp_avg_sqs missing");
  const bool advance = adaptive && decay_kind != 0;
  TORCH_CHECK(!advance || (mus.size() == n && abs_means.size() == n),
              "adamhd: adaptive delta needs delta_mus and abs_means");

  at::Tensor sums = at::zeros({want_sums ? static_cast<int64_t>(n) : 0},
                              at::TensorOptions().dtype(at::kDouble));
  double* sums_ptr = sums.data_ptr<double>();
  const double tau = lr * weight_decay;

  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    const at::Tensor& m = exp_avgs[i];
    const at::Tensor& v = exp_avg_sqs[i];
    const at::Tensor* mx = amsgrad ? &max_exp_avg_sqs[i] : nullptr;
    TORCH_CHECK(p.device().is_cpu(), "adamhd: the fused CPU kernel got a non-CPU tensor");
    TORCH_CHECK(g.scalar_type() == p.scalar_type() && m.scalar_type() == p.scalar_type() &&
                    v.scalar_type() == p.scalar_type() &&
                    (mx == nullptr || mx->scalar_type() == p.scalar_type()),
                "adamhd: the fused kernel needs p, grad and state of one dtype");

    const double step = read_step_and_increment(steps[i]);
    double d = delta;
    if (advance) d = advance_threshold(mus[i], abs_means[i], delta_beta, delta_scale);
    if (p.numel() == 0) continue;

    const double bc1 = 1.0 - std::pow(beta1, step);
    const double bc2_sqrt = std::pow(1.0 - std::pow(beta2, step), 0.5);
    const double weight1 = 1.0 - beta1;
    Consts<double> c{weight1,
                     0.0,
                     beta2,
                     1.0 - beta2,
                     -(lr / bc1),
                     bc2_sqrt,
                     eps,
                     tau,
                     1.0 - tau,
                     1.0 + tau,
                     d,
                     -d,
                     grad_scale > 0 ? grad_scale : 1.0};
    Flags f{weight1 < 0.5, maximize, grad_scale > 0};

    std::vector<const at::Tensor*> others{&g, &m, &v};
    if (mx != nullptr) others.push_back(mx);
    const bool direct = same_dense_layout(p, others);
    at::Tensor pc = direct ? p : p.contiguous(), gc = direct ? g : g.contiguous();
    at::Tensor mc = direct ? m : m.contiguous(), vc = direct ? v : v.contiguous();
    at::Tensor xc = (mx == nullptr) ? at::Tensor() : (direct ? *mx : mx->contiguous());

    double s = 0.0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.scalar_type(), "adamhd_fused", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      Consts<opmath_t> co = broadcast<opmath_t>(c);
      // torch.lerp computes 1 - weight in the compute type
      co.one_minus_w1 = opmath_t(1) - co.weight1;
      s = dispatch_tensor<scalar_t>(decay_kind, amsgrad, pc, gc, mc, vc,
                                    mx == nullptr ? nullptr : &xc, co, f, want_sums);
    });
    if (!direct) {
      p.copy_(pc);
      m.copy_(mc);
      v.copy_(vc);
      if (mx != nullptr) mx->copy_(xc);
    }
    if (want_sums) sums_ptr[i] = s;
  }
  return sums;
}

// sum|p| per tensor (float64), in storage order like fused_step: the fresh value of the adaptive
// threshold's statistic when the cached one is stale.
at::Tensor abs_sums(const std::vector<at::Tensor>& params) {
  at::Tensor sums = at::zeros({static_cast<int64_t>(params.size())},
                              at::TensorOptions().dtype(at::kDouble));
  double* out = sums.data_ptr<double>();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p0 = params[i];
    TORCH_CHECK(p0.device().is_cpu(), "adamhd: abs_sums got a non-CPU tensor");
    if (p0.numel() == 0) continue;
    at::Tensor p = p0.is_non_overlapping_and_dense() ? p0 : p0.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.scalar_type(), "adamhd_abs", [&] {
      const scalar_t* ptr = p.const_data_ptr<scalar_t>();
      out[i] = at::parallel_reduce(
          0, p.numel(), kGrain, 0.0,
          [&](int64_t b, int64_t e, double ident) { return ident + sum_abs_range(ptr, b, e); },
          [](double a, double b) { return a + b; });
    });
  }
  return sums;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("abs_sums", &abs_sums, "sum|p| per tensor, as the fused step accumulates it");
  m.def("fused_step", &fused_step, "One fused AdamHD step over lists of CPU tensors");
}
