// Shared pieces of torchcf's compiled training kernels: argument checks, the per-step Adam
// constants and the two forms of the Adam update (torch.optim.Adam's formula).
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define TORCHCF_FLUSH_DENORMALS() _mm_setcsr(_mm_getcsr() | 0x8040)
#else
#define TORCHCF_FLUSH_DENORMALS()
#endif

namespace torchcf {

// The calling thread's floating-point state as it was: a kernel flushes denormals while it runs
// (moments of rarely seen rows decay into them) and must not leave the caller's thread changed.
class KeepFloatState {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  KeepFloatState() : csr_(_mm_getcsr()) {}
  ~KeepFloatState() { _mm_setcsr(csr_); }

 private:
  unsigned int csr_;
#endif
};

// What crosses from Python: the flat buffers of a compiled step, a run of samples, Adam's
// settings and the optimizer (named, as torchcf.training.steps declares them).
struct Buffers {
  torch::Tensor flat, grad, exp_avg, exp_avg_sqrt, steps;  // exp_avg_sqrt: sqrt of Adam's v
};

struct Batches {
  torch::Tensor users, items, labels, order, logits;  // logits: one per sample, or empty
  int64_t batch_size;
};

struct AdamSettings {
  double lr, beta1, beta2, eps, weight_decay;
};

enum class Optimizer : int64_t { kAdam = 0, kLazyAdam = 1, kSgd = 2 };

inline void check(const torch::Tensor& t, c10::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Per-step constants; 1 - beta is computed in double (in float, 1 - 0.999f is off by 1.3e-5).
struct AdamCoefficients {
  float step_size, inv_bias2_sqrt, one_minus_beta1, beta2, one_minus_beta2, sqrt_beta2, eps,
      weight_decay;
};

// The full Adam step on n consecutive parameters with their gradients. `s` holds sqrt(v), the
// square root of Adam's second moment (see below).
inline void adam_full(float* p, float* g, float* m, float* s, int64_t n,
                      const AdamCoefficients& c) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float grad = g[j] + c.weight_decay * p[j];
    const float mj = m[j] + c.one_minus_beta1 * (grad - m[j]);
    const float sj = std::sqrt(s[j] * s[j] * c.beta2 + c.one_minus_beta2 * grad * grad);
    m[j] = mj;
    s[j] = sj;
    p[j] -= c.step_size * mj / (sj * c.inv_bias2_sqrt + c.eps);
    g[j] = 0.0f;
  }
}

// The same step where the gradient is zero (a row no sample of the batch touched):
// m <- beta1 m, sqrt(v) <- sqrt(beta2) sqrt(v). Keeping sqrt(v) instead of v saves the square
// root per parameter, which with the division bounds this loop (it runs over every parameter at
// every step); the results equal the sqrt-of-v form up to float rounding.
inline void adam_decay(float* p, float* m, float* s, int64_t n, const AdamCoefficients& c) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float mj = m[j] - c.one_minus_beta1 * m[j];
    const float sj = s[j] * c.sqrt_beta2;
    m[j] = mj;
    s[j] = sj;
    p[j] -= c.step_size * mj / (sj * c.inv_bias2_sqrt + c.eps);
  }
}


inline AdamCoefficients adam_coefficients(double step, const AdamSettings& a) {
  const double bias1 = 1.0 - std::pow(a.beta1, step);
  const double bias2 = 1.0 - std::pow(a.beta2, step);
  return AdamCoefficients{static_cast<float>(a.lr / bias1),
                          static_cast<float>(1.0 / std::sqrt(bias2)),
                          static_cast<float>(1.0 - a.beta1),
                          static_cast<float>(a.beta2),
                          static_cast<float>(1.0 - a.beta2),
                          static_cast<float>(std::sqrt(a.beta2)),
                          static_cast<float>(a.eps),
                          static_cast<float>(a.weight_decay)};
}

// A run's samples in training order (the arguments checked, logits: one per sample or none):
// users[order[k]], items[order[k]] (offset by num_users, so both index one table of user rows
// then item rows), labels[order[k]]. Gathered first: one
// tight loop of independent loads instead of three cache misses per sample in the training loop.
struct Samples {
  std::vector<int64_t> user, item;
  std::vector<float> label;
};

inline Samples gather_samples(const Batches& b, int64_t num_users, int64_t num_items) {
  const torch::Tensor &users = b.users, &items = b.items, &labels = b.labels, &order = b.order;
  const torch::Tensor& logits = b.logits;
  check(users, torch::kInt64, "users");
  check(items, torch::kInt64, "items");
  check(order, torch::kInt64, "order");
  check(labels, torch::kFloat32, "labels");
  const int64_t samples = users.numel();
  TORCH_CHECK(items.numel() == samples && labels.numel() == samples,
              "users, items and labels differ in length");
  TORCH_CHECK(logits.numel() == 0 || logits.numel() == samples, "logits: one per sample, or none");
  const int64_t total = order.numel();
  const int64_t* U = users.data_ptr<int64_t>();
  const int64_t* I = items.data_ptr<int64_t>();
  const float* Y = labels.data_ptr<float>();
  const int64_t* O = order.data_ptr<int64_t>();
  for (int64_t k = 0; k < total; ++k) {
    TORCH_CHECK(O[k] >= 0 && O[k] < samples, "order index out of range");
  }
  Samples s{std::vector<int64_t>(total), std::vector<int64_t>(total), std::vector<float>(total)};
  at::parallel_for(0, total, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t o = O[k];
      s.user[k] = U[o];
      s.item[k] = I[o];
      s.label[k] = Y[o];
    }
  });
  for (int64_t k = 0; k < total; ++k) {
    TORCH_CHECK(s.user[k] >= 0 && s.user[k] < num_users, "user index out of range");
    TORCH_CHECK(s.item[k] >= 0 && s.item[k] < num_items, "item index out of range");
    s.item[k] += num_users;
  }
  return s;
}

// Writes each sample's logit to its place before the shuffle: logits[order[k]] = z[k].
inline void scatter_logits(torch::Tensor& logits, const torch::Tensor& order,
                           const std::vector<float>& z) {
  if (logits.numel() == 0) return;  // (sizes checked by gather_samples)
  float* Z = logits.data_ptr<float>();
  const int64_t* O = order.data_ptr<int64_t>();
  at::parallel_for(0, order.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) Z[O[k]] = z[k];  // a permutation: no two alike
  });
}

// BCE on logits, stable (softplus(z) - y z); returns the loss and sets sigmoid(z).
inline double bce(float z, float y, float* sigmoid) {
  const float e = std::exp(-std::abs(z));
  *sigmoid = z >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
  return std::max(z, 0.0f) - y * z + std::log1p(e);
}

// The checks every compiled step starts with: the buffers' kind and the batch size.
inline void check_buffers(const Buffers& b, const Batches& batches) {
  for (const auto* t : {&b.flat, &b.grad, &b.exp_avg, &b.exp_avg_sqrt, &batches.logits}) {
    check(*t, torch::kFloat32, "a parameter, moment or logit buffer");
  }
  TORCH_CHECK(batches.batch_size > 0, "batch_size must be positive");
}

}  // namespace torchcf
