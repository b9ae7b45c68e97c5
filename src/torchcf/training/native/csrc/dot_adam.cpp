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
#include "adam.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

using namespace torchcf;

namespace {
constexpr int64_t kBlock = 2048;  // samples per block of the forward pass
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
  for (const auto* t : {&flat, &grad, &exp_avg, &exp_avg_sqrt, &logits}) {
    check(*t, torch::kFloat32, "a parameter, moment or logit buffer");
  }
  const int64_t total = order.numel();
  const int64_t numel = flat.numel();
  const int64_t table_numel = num_rows * dim;
  TORCH_CHECK(numel == table_numel + (has_head ? dim + 1 : 0), "flat buffer size mismatch");
  TORCH_CHECK(batch_size > 0, "batch_size must be positive");
  // user rows index the table directly; item rows follow them (su, si: row numbers)
  const Samples samples =
      gather_samples(users, items, labels, order, logits, num_users, num_rows - num_users);
  const std::vector<int64_t>& su = samples.user;
  const std::vector<int64_t>& si = samples.item;
  const std::vector<float>& sy = samples.label;

  float* P = flat.data_ptr<float>();
  float* G = grad.data_ptr<float>();
  float* M = exp_avg.data_ptr<float>();
  float* S = exp_avg_sqrt.data_ptr<float>();
  const float* h = has_head ? P + table_numel : nullptr;
  float* head_grad = has_head ? G + table_numel : nullptr;
  std::vector<float> sz(total), sg(total), partial;
  std::vector<double> block_loss;
  double loss_sum = 0.0;

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
          const float* qi = P + si[k] * dim;
          float z = has_head ? h[dim] : 0.0f;
          if (has_head) {
#pragma omp simd reduction(+ : z)
            for (int64_t d = 0; d < dim; ++d) z += h[d] * pu[d] * qi[d];
          } else {
#pragma omp simd reduction(+ : z)
            for (int64_t d = 0; d < dim; ++d) z += pu[d] * qi[d];
          }
          sz[k] = z;
          float sigmoid;
          loss += bce(z, sy[k], &sigmoid);
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
          const int64_t u = su[k], i = si[k];
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
    const AdamCoefficients c = adam_coefficients(step, lr, beta1, beta2, eps, weight_decay);
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
  scatter_logits(logits, order, sz);
  steps.fill_(step);
  return loss_sum;
}
