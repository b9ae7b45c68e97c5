// The exact MF/GMF training step (BCE on logits + dense Adam, torch.optim.Adam's formula) for
// a run of batches in one call. Built on first use by torchcf.native (torch.utils.cpp_extension).
//
// Parameter layout (torchcf.steps.FlatAdam): one flat float32 buffer holding the user rows, then
// the item rows (num_rows x dim), then, for GMF, the head h (dim) and its bias b (1). `grad` has
// the same layout and is all zeros on entry and on return. Per batch of n samples, with
// x = p_u * q_i, logit z = h.x + b (GMF) or sum(x) (MF), g = (sigmoid(z) - y) / n:
//   dL/dp_u += g (w * q_i), dL/dq_i += g (w * p_u)  (w = h or 1), dL/dh += g x, dL/db += g,
// then every parameter takes one Adam step (the seed's semantics: dense Adam, every parameter
// moves every step). The gradients of a batch are computed before any parameter moves; rows no
// sample touched take the zero-gradient form of the step (no gradient to read or clear).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define TORCHCF_FLUSH_DENORMALS() _mm_setcsr(_mm_getcsr() | 0x8040)
#else
#define TORCHCF_FLUSH_DENORMALS()
#endif

namespace {

void check(const torch::Tensor& t, c10::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

constexpr int64_t kBlock = 2048;  // samples per block of the forward pass

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

}  // namespace

// `exp_avg_sqrt` holds sqrt(exp_avg_sq) (torchcf.steps.NativeDotProductAdamStep converts).
// The samples, in training order, are users[order[k]], items[order[k]], labels[order[k]] for
// k = 0 .. order.numel() - 1; each one's logit (before its batch's update) goes to
// logits[order[k]] (unless logits is empty). So an epoch is shuffled by passing a permutation,
// without gathering copies. Returns the summed BCE loss of the samples (before their updates).
double dot_adam_batches(torch::Tensor flat, torch::Tensor grad, torch::Tensor exp_avg,
                      torch::Tensor exp_avg_sqrt, torch::Tensor steps, torch::Tensor users,
                      torch::Tensor items, torch::Tensor labels, torch::Tensor order,
                      torch::Tensor logits, int64_t num_users, int64_t num_rows, int64_t dim,
                      bool has_head, int64_t batch_size, double lr, double beta1, double beta2,
                      double eps, double weight_decay) {
  for (const auto* t : {&flat, &grad, &exp_avg, &exp_avg_sqrt, &labels, &logits}) {
    check(*t, torch::kFloat32, "a parameter, moment, label or logit buffer");
  }
  check(users, torch::kInt64, "users");
  check(items, torch::kInt64, "items");
  check(order, torch::kInt64, "order");
  const int64_t samples = users.numel();
  TORCH_CHECK(items.numel() == samples && labels.numel() == samples,
              "users, items and labels differ in length");
  const bool want_logits = logits.numel() > 0;
  TORCH_CHECK(!want_logits || logits.numel() == samples, "logits: one per sample, or none");
  const int64_t total = order.numel();
  const int64_t numel = flat.numel();
  const int64_t table_numel = num_rows * dim;
  TORCH_CHECK(numel == table_numel + (has_head ? dim + 1 : 0), "flat buffer size mismatch");
  TORCH_CHECK(batch_size > 0, "batch_size must be positive");

  float* P = flat.data_ptr<float>();
  float* G = grad.data_ptr<float>();
  float* M = exp_avg.data_ptr<float>();
  float* S = exp_avg_sqrt.data_ptr<float>();
  float* Z = logits.data_ptr<float>();
  const int64_t* U = users.data_ptr<int64_t>();
  const int64_t* I = items.data_ptr<int64_t>();
  const float* Y = labels.data_ptr<float>();
  const int64_t* O = order.data_ptr<int64_t>();
  const float* h = has_head ? P + table_numel : nullptr;
  float* head_grad = has_head ? G + table_numel : nullptr;
  // gather the run's samples first: one tight loop of independent loads, instead of three
  // cache misses per sample inside the training loop
  std::vector<int64_t> su(total), si(total);
  std::vector<float> sy(total), sz(total), sg(total), partial;
  std::vector<double> block_loss;
  double loss_sum = 0.0;
  for (int64_t k = 0; k < total; ++k) {
    TORCH_CHECK(O[k] >= 0 && O[k] < samples, "order index out of range");
  }
  at::parallel_for(0, total, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t o = O[k];
      su[k] = U[o];
      si[k] = I[o];
      sy[k] = Y[o];
    }
  });
  for (int64_t k = 0; k < total; ++k) {
    TORCH_CHECK(su[k] >= 0 && su[k] < num_users, "user index out of range");
    TORCH_CHECK(si[k] >= 0 && si[k] < num_rows - num_users, "item index out of range");
  }

  double step = steps.item<double>();
  std::vector<uint8_t> touched(num_rows, 0);
  TORCHCF_FLUSH_DENORMALS();
  for (int64_t start = 0; start < total; start += batch_size) {
    const int64_t n = std::min(batch_size, total - start);
    // forward, the per-sample gradient scale, the loss and the head's gradient, in fixed
    // blocks of samples (in parallel when the batch is large); the blocks' partial sums are
    // added in block order, so results do not depend on the number of threads
    const float inv_n = 1.0f / static_cast<float>(n);
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    partial.assign(blocks * (dim + 1), 0.0f);
    block_loss.assign(blocks, 0.0);
    at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      for (int64_t block = block_begin; block < block_end; ++block) {
        float* gh = partial.data() + block * (dim + 1);
        double loss = 0.0;
        const int64_t first = start + block * kBlock;
        const int64_t last = std::min(first + kBlock, start + n);
        for (int64_t k = first; k < last; ++k) {
          const float* pu = P + su[k] * dim;
          const float* qi = P + (num_users + si[k]) * dim;
          float z = has_head ? h[dim] : 0.0f;
          if (has_head) {
#pragma omp simd reduction(+ : z)
            for (int64_t d = 0; d < dim; ++d) z += h[d] * pu[d] * qi[d];
          } else {
#pragma omp simd reduction(+ : z)
            for (int64_t d = 0; d < dim; ++d) z += pu[d] * qi[d];
          }
          sz[k] = z;
          const float e = std::exp(-std::abs(z));  // BCE on logits, stable: softplus(z) - y z
          const float sigmoid = z >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
          loss += std::max(z, 0.0f) - sy[k] * z + std::log1p(e);
          const float g = (sigmoid - sy[k]) * inv_n;
          sg[k] = g;
          if (has_head) {
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d) gh[d] += g * pu[d] * qi[d];
            gh[dim] += g;
          }
        }
        block_loss[block] = loss;
      }
    });
    for (int64_t block = 0; block < blocks; ++block) {
      loss_sum += block_loss[block];
      if (has_head) {
        const float* gh = partial.data() + block * (dim + 1);
        for (int64_t d = 0; d <= dim; ++d) head_grad[d] += gh[d];
      }
    }
    // gradients: each row's sum over its samples (rows split between threads, no two threads
    // write one row; samples are visited in batch order, so sums do not depend on the threads)
    const int64_t parts = n >= 2048 ? at::get_num_threads() : 1;
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      for (int64_t part = part_begin; part < part_end; ++part) {
        const int64_t lo = num_rows * part / parts, hi = num_rows * (part + 1) / parts;
        for (int64_t k = start; k < start + n; ++k) {
          const int64_t u = su[k], i = num_users + si[k];
          // row's gradient += g (w * other row), w = h or 1
          const auto add = [&](int64_t row, int64_t other) {
            if (row < lo || row >= hi) return;
            float* gr = G + row * dim;
            const float* q = P + other * dim;
            const float g = sg[k];
            if (has_head) {
#pragma omp simd
              for (int64_t d = 0; d < dim; ++d) gr[d] += g * h[d] * q[d];
            } else {
#pragma omp simd
              for (int64_t d = 0; d < dim; ++d) gr[d] += g * q[d];
            }
            touched[row] = 1;
          };
          add(u, i);
          add(i, u);
        }
      }
    });
    step += 1.0;
    const double bias1 = 1.0 - std::pow(beta1, step);
    const double bias2 = 1.0 - std::pow(beta2, step);
    const AdamCoefficients c{static_cast<float>(lr / bias1),
                             static_cast<float>(1.0 / std::sqrt(bias2)),
                             static_cast<float>(1.0 - beta1),
                             static_cast<float>(beta2),
                             static_cast<float>(1.0 - beta2),
                             static_cast<float>(std::sqrt(beta2)),
                             static_cast<float>(eps),
                             static_cast<float>(weight_decay)};
    // with weight decay every gradient is non-zero: every row takes the full step
    const bool decay_only_ok = weight_decay == 0.0;
    at::parallel_for(0, num_rows, 256, [&](int64_t begin, int64_t end) {
      TORCHCF_FLUSH_DENORMALS();  // moments of rarely seen rows decay into denormals
      for (int64_t row = begin; row < end; ++row) {
        const int64_t o = row * dim;
        if (touched[row] || !decay_only_ok) {
          adam_full(P + o, G + o, M + o, S + o, dim, c);
          touched[row] = 0;
        } else {
          adam_decay(P + o, M + o, S + o, dim, c);
        }
      }
    });
    if (has_head) adam_full(P + table_numel, G + table_numel, M + table_numel,
                            S + table_numel, dim + 1, c);
  }
  if (want_logits) {
    at::parallel_for(0, total, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) Z[O[k]] = sz[k];  // a permutation: no two alike
    });
  }
  steps.fill_(step);
  return loss_sum;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dot_adam_batches", &dot_adam_batches, "exact BCE + Adam steps for MF/GMF",
        py::call_guard<py::gil_scoped_release>());
}
