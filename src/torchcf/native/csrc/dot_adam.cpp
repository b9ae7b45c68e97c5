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

// The model's shape: rows of users then items, `dim` columns; GMF's head or MF's all-ones one.
struct DotShape {
  int64_t num_users, num_rows, dim;
  bool has_head;
};

namespace {

constexpr int64_t kBlock = 2048;  // samples per block of the forward pass

// One run of batches through MF/GMF: the buffers and the step's parts.
class DotRun {
 public:
  DotRun(const Buffers& b, const DotShape& shape)
      : shape_(shape), table_numel_(shape.num_rows * shape.dim) {
    TORCH_CHECK(b.flat.numel() == table_numel_ + (shape.has_head ? shape.dim + 1 : 0),
                "flat buffer size mismatch");
    P_ = b.flat.data_ptr<float>();
    G_ = b.grad.data_ptr<float>();
    M_ = b.exp_avg.data_ptr<float>();
    S_ = b.exp_avg_sqrt.data_ptr<float>();
    h_ = shape.has_head ? P_ + table_numel_ : nullptr;
    touched_.assign(shape.num_rows, 0);
  }

  // forward, the per-sample gradient scale, the loss and the head's gradient, in fixed
  // blocks of samples (in parallel when the batch is large); the blocks' partial sums are
  // added in block order, so results do not depend on the number of threads
  void forward(const Samples& s, int64_t start, int64_t n, float* sz, float* sg, double& loss) {
    const int64_t dim = shape_.dim;
    const bool has_head = shape_.has_head;
    const float* h = h_;
    const float inv_n = 1.0f / static_cast<float>(n);
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    partial_.assign(blocks * (dim + 1), 0.0f);
    block_loss_.assign(blocks, 0.0);
    at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      for (int64_t block = block_begin; block < block_end; ++block) {
        float* gh = partial_.data() + block * (dim + 1);
        double block_loss = 0.0;
        const int64_t first = start + block * kBlock;
        const int64_t last = std::min(first + kBlock, start + n);
        for (int64_t k = first; k < last; ++k) {
          const float* pu = P_ + s.user[k] * dim;
          const float* qi = P_ + s.item[k] * dim;
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
          block_loss += bce(z, s.label[k], &sigmoid);
          const float g = (sigmoid - s.label[k]) * inv_n;
          sg[k] = g;
          if (has_head) {
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d) gh[d] += g * pu[d] * qi[d];
            gh[dim] += g;
          }
        }
        block_loss_[block] = block_loss;
      }
    });
    float* head_grad = has_head ? G_ + table_numel_ : nullptr;
    for (int64_t block = 0; block < blocks; ++block) {
      loss += block_loss_[block];
      if (has_head) {
        const float* gh = partial_.data() + block * (dim + 1);
        for (int64_t d = 0; d <= dim; ++d) head_grad[d] += gh[d];
      }
    }
  }

  // gradients: each row's sum over its samples (rows split between threads, no two threads
  // write one row; samples are visited in batch order, so sums do not depend on the threads)
  void row_gradients(const Samples& s, int64_t start, int64_t n, const float* sg) {
    const int64_t dim = shape_.dim, num_rows = shape_.num_rows;
    const bool has_head = shape_.has_head;
    const float* h = h_;
    const int64_t parts = n >= 2048 ? at::get_num_threads() : 1;
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      for (int64_t part = part_begin; part < part_end; ++part) {
        const int64_t lo = num_rows * part / parts, hi = num_rows * (part + 1) / parts;
        for (int64_t k = start; k < start + n; ++k) {
          const int64_t u = s.user[k], i = s.item[k];
          // row's gradient += g (w * other row), w = h or 1
          const auto add = [&](int64_t row, int64_t other) {
            if (row < lo || row >= hi) return;
            float* gr = G_ + row * dim;
            const float* q = P_ + other * dim;
            const float g = sg[k];
            if (has_head) {
#pragma omp simd
              for (int64_t d = 0; d < dim; ++d) gr[d] += g * h[d] * q[d];
            } else {
#pragma omp simd
              for (int64_t d = 0; d < dim; ++d) gr[d] += g * q[d];
            }
            touched_[row] = 1;
          };
          add(u, i);
          add(i, u);
        }
      }
    });
  }

  // every parameter takes one Adam step; rows no sample touched the zero-gradient form
  void adam(double step, const AdamSettings& a) {
    const AdamCoefficients c = adam_coefficients(step, a);
    const int64_t dim = shape_.dim;
    // with weight decay every gradient is non-zero: every row takes the full step
    const bool decay_only_ok = a.weight_decay == 0.0;
    at::parallel_for(0, shape_.num_rows, 256, [&](int64_t begin, int64_t end) {
      TORCHCF_FLUSH_DENORMALS();  // moments of rarely seen rows decay into denormals
      for (int64_t row = begin; row < end; ++row) {
        const int64_t o = row * dim;
        if (touched_[row] || !decay_only_ok) {
          adam_full(P_ + o, G_ + o, M_ + o, S_ + o, dim, c);
          touched_[row] = 0;
        } else {
          adam_decay(P_ + o, M_ + o, S_ + o, dim, c);
        }
      }
    });
    const int64_t t = table_numel_;
    if (shape_.has_head) adam_full(P_ + t, G_ + t, M_ + t, S_ + t, dim + 1, c);
  }

 private:
  const DotShape& shape_;
  const int64_t table_numel_;
  float *P_ = nullptr, *G_ = nullptr, *M_ = nullptr, *S_ = nullptr;
  const float* h_ = nullptr;
  std::vector<uint8_t> touched_;
  std::vector<float> partial_;
  std::vector<double> block_loss_;
};

}  // namespace

// `exp_avg_sqrt` holds sqrt(exp_avg_sq) (torchcf.training.steps.NativeDotProductAdamStep
// converts). The samples, in training order, are users[order[k]], items[order[k]],
// labels[order[k]] for k = 0 .. order.numel() - 1; each one's logit (before its batch's update)
// goes to logits[order[k]] (unless logits is empty). So an epoch is shuffled by passing a
// permutation, without gathering copies. Returns the summed BCE loss of the samples (before
// their updates).
double dot_adam_batches(const Buffers& buffers, const Batches& batches, const DotShape& shape,
                        const AdamSettings& adam) {
  check_buffers(buffers, batches);
  const KeepFloatState keep_float_state;
  // user rows index the table directly; item rows follow them
  const Samples samples = gather_samples(batches, shape.num_users, shape.num_rows - shape.num_users);
  const int64_t total = batches.order.numel(), batch_size = batches.batch_size;
  DotRun run(buffers, shape);
  std::vector<float> sz(total), sg(total);
  double loss_sum = 0.0, step = buffers.steps.item<double>();
  TORCHCF_FLUSH_DENORMALS();
  for (int64_t start = 0; start < total; start += batch_size) {
    const int64_t n = std::min(batch_size, total - start);
    run.forward(samples, start, n, sz.data(), sg.data(), loss_sum);
    run.row_gradients(samples, start, n, sg.data());
    step += 1.0;
    run.adam(step, adam);
  }
  torch::Tensor logits = batches.logits;
  scatter_logits(logits, batches.order, sz);
  buffers.steps.fill_(step);
  return loss_sum;
}
