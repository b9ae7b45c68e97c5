// The MLP / NeuMF training step (BCE on logits + Adam) for a run of batches in one call, with
// the gradient written out by hand. Built on first use by torchcf.native.
//
// Parameter layout (the models' registration order, flattened by torchcf.steps.FlatAdam):
//   [GMF table: user rows then item rows, gmf_dim each]   (NeuMF only)
//   [MLP table: user rows then item rows, width each]
//   per tower layer l: weight (out_l x in_l), bias (out_l); in_0 = 2 width
//   head weight ([gmf_dim] + out_last), head bias (1)
// Per batch of n samples: x = [p_u; q_i] (MLP rows), a_l = W_l h_{l-1} + b_l,
// h_l = relu(a_l) * keep_l (dropout: keep is 0 or 1/(1-p)), z = h_G . (p^G_u * q^G_i) +
// h_M . h_last + b, g = (sigmoid(z) - y) / n, and the chain rule back to the rows; then Adam.
// Dense Adam (default) moves every parameter every step, exactly torch.optim.Adam (rows no
// sample touched take the zero-gradient form); lazy Adam moves only the rows a batch touched
// (their moments too; the tower and head stay dense), torch.optim.SparseAdam's rule (its eps
// is added before the bias correction); SGD is torch.optim.SGD without momentum (NeuMF's
// fine-tuning after pretraining).
#include "adam.h"

#include <c10/core/GradMode.h>

#include <cstring>

using namespace torchcf;

namespace {

// splitmix64: a counter-based generator, so dropout masks depend on (seed, step, layer,
// position) only, not on threads or on how an epoch is cut into calls
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// keep[j] for j < count: 0 where the unit is dropped (its random byte < threshold), else scale
void fill_keep(float* keep, int64_t count, uint64_t seed, int64_t step, int64_t layer,
               int64_t threshold, float scale) {
  const uint64_t key = mix(seed ^ mix(static_cast<uint64_t>(step) * 64 + layer));
  for (int64_t j = 0; j < count; j += 8) {
    const uint64_t bits = mix(key + static_cast<uint64_t>(j >> 3));
    const int64_t end = std::min<int64_t>(8, count - j);
    for (int64_t b = 0; b < end; ++b) {
      keep[j + b] = static_cast<int64_t>((bits >> (8 * b)) & 0xFF) >= threshold ? scale : 0.0f;
    }
  }
}

// plain SGD (torch.optim.SGD without momentum): p -= lr (g + weight_decay p); clears g
inline void sgd_update(float* p, float* g, int64_t n, float lr, float weight_decay) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    p[j] -= lr * (g[j] + weight_decay * p[j]);
    g[j] = 0.0f;
  }
}

}  // namespace

// The dropout factors the kernel uses for `layer` at Adam step `step` (1-based, the step being
// taken), `count` = batch rows x layer width: exposed so tests can replay a step with autograd.
torch::Tensor dropout_keep(int64_t seed, int64_t step, int64_t layer, int64_t count,
                           int64_t threshold, double scale) {
  torch::Tensor keep = torch::empty({count}, torch::kFloat32);
  fill_keep(keep.data_ptr<float>(), count, static_cast<uint64_t>(seed), step, layer, threshold,
            static_cast<float>(scale));
  return keep;
}

// The tower's shape as the model declares it (torchcf.models.layers.TowerLayout).
struct TowerShape {
  int64_t num_users, num_items, gmf_dim, width;
  std::vector<int64_t> layer_widths;
};

struct DropoutSettings {
  int64_t threshold;  // 0: no dropout
  double scale;
  int64_t seed;
};

namespace {

// One run of batches through an MLP/NeuMF: the flat buffer's layout, the reused activation
// buffers, and the step's parts (forward, head, backward, the rows' gradients, the update).
class TowerRun {
 public:
  TowerRun(const Buffers& b, const TowerShape& shape, const DropoutSettings& drop, int64_t bs)
      : b_(b), shape_(shape), drop_(drop), rows_(shape.num_users + shape.num_items),
        layers_(static_cast<int64_t>(shape.layer_widths.size())) {
    TORCH_CHECK(layers_ > 0, "the tower needs a layer");
    layout();
    P_ = b.flat.data_ptr<float>();
    G_ = b.grad.data_ptr<float>();
    M_ = b.exp_avg.data_ptr<float>();
    S_ = b.exp_avg_sqrt.data_ptr<float>();
    buffers(bs);
    touched_.assign(rows_, 0);
  }

  // x = [p_u; q_i], then h_l = relu(W_l h_{l-1} + b_l) * keep_l
  void forward(const int64_t* bu, const int64_t* bi, int64_t n, double step) {
    const int64_t width = shape_.width;
    xn_ = x_.narrow(0, 0, n);
    float* X = xn_.data_ptr<float>();
    const float* table = P_ + mlp_table_;
    // (the random rows are cache misses: both cores fetch, a few rows ahead)
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        if (k + 4 < end) {
          __builtin_prefetch(table + bu[k + 4] * width);
          __builtin_prefetch(table + bi[k + 4] * width);
        }
        std::memcpy(X + k * 2 * width, table + bu[k] * width, width * sizeof(float));
        std::memcpy(X + k * 2 * width + width, table + bi[k] * width, width * sizeof(float));
      }
    });
    for (int64_t l = 0; l < layers_; ++l) layer_forward(l, n, step);
  }

  // logits, g = (sigmoid(z) - y) / n per sample, the loss added to `loss`; the head's gradient
  void head(const int64_t* bu, const int64_t* bi, const float* y, int64_t n, float* z_out,
            float* g_out, double& loss) {
    const int64_t gmf_dim = shape_.gmf_dim, last = last_;
    const float* head = P_ + head_at_;  // [h_G (gmf_dim); h_M (last); b]
    float* head_grad = G_ + head_at_;
    const float* H = act_[layers_ - 1].data_ptr<float>();
    const float* hg = head;
    const float* hm = head + gmf_dim;
    const float inv_n = 1.0f / static_cast<float>(n);
    float bias_g = 0.0f;
    for (int64_t k = 0; k < n; ++k) {
      const float* hk = H + k * last;
      const float* pu = P_ + bu[k] * gmf_dim;  // NeuMF's GMF rows (unused for MLP)
      const float* qi = P_ + bi[k] * gmf_dim;
      float z = head[gmf_dim + last];
#pragma omp simd reduction(+ : z)
      for (int64_t j = 0; j < last; ++j) z += hm[j] * hk[j];
      float zg = 0.0f;
#pragma omp simd reduction(+ : zg)
      for (int64_t d = 0; d < gmf_dim; ++d) zg += hg[d] * pu[d] * qi[d];
      z += zg;
      float sigmoid;
      loss += bce(z, y[k], &sigmoid);
      z_out[k] = z;
      const float g = (sigmoid - y[k]) * inv_n;
      g_out[k] = g;
      bias_g += g;
      float* ghm = head_grad + gmf_dim;
#pragma omp simd
      for (int64_t j = 0; j < last; ++j) ghm[j] += g * hk[j];
#pragma omp simd
      for (int64_t d = 0; d < gmf_dim; ++d) head_grad[d] += g * pu[d] * qi[d];
    }
    head_grad[gmf_dim + last] += bias_g;
  }

  // back through the tower to dL/dx: da_l = dh_l * relu'(a_l) * keep_l (h_l > 0 exactly where
  // both the unit was active and kept; the factor there is keep_l)
  void backward(const float* g, int64_t n) {
    const float* hm = P_ + head_at_ + shape_.gmf_dim;
    float* D = act_grad_[layers_ - 1].data_ptr<float>();
    for (int64_t k = 0; k < n; ++k) {
#pragma omp simd
      for (int64_t j = 0; j < last_; ++j) D[k * last_ + j] = g[k] * hm[j];
    }
    activation_grad(layers_ - 1, n);
    for (int64_t l = layers_ - 1; l >= 0; --l) {
      torch::Tensor da = act_grad_[l].narrow(0, 0, n);
      torch::Tensor below = l == 0 ? xn_ : act_[l - 1].narrow(0, 0, n);
      at::mm_out(weight_grad_[l], da.t(), below);
      torch::Tensor dbelow = l == 0 ? x_grad_.narrow(0, 0, n) : act_grad_[l - 1].narrow(0, 0, n);
      at::mm_out(dbelow, da, weight_[l]);
      if (l > 0) activation_grad(l - 1, n);
    }
  }

  // the rows' gradients, each row summed by the thread owning it, samples in batch order
  void row_gradients(const int64_t* bu, const int64_t* bi, const float* g, int64_t n) {
    const int64_t width = shape_.width, gmf_dim = shape_.gmf_dim, rows = rows_;
    const float* DX = x_grad_.data_ptr<float>();
    const float* hg = P_ + head_at_;
    const int64_t parts = n >= 64 ? at::get_num_threads() : 1;
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      for (int64_t part = part_begin; part < part_end; ++part) {
        const int64_t lo = rows * part / parts, hi = rows * (part + 1) / parts;
        for (int64_t k = 0; k < n; ++k) {
          const int64_t u = bu[k], i = bi[k];
          for (int side = 0; side < 2; ++side) {
            const int64_t row = side == 0 ? u : i, other = side == 0 ? i : u;
            if (row < lo || row >= hi) continue;
            float* gr = G_ + mlp_table_ + row * width;
            const float* dx = DX + k * 2 * width + side * width;
#pragma omp simd
            for (int64_t d = 0; d < width; ++d) gr[d] += dx[d];
            if (gmf_dim > 0) {
              float* gg = G_ + row * gmf_dim;
              const float* q = P_ + other * gmf_dim;
              const float gk = g[k];
#pragma omp simd
              for (int64_t d = 0; d < gmf_dim; ++d) gg[d] += gk * hg[d] * q[d];
            }
            touched_[row] = 1;
          }
        }
      }
    });
  }

  // SGD: rows no sample touched have no gradient, only weight decay moves them
  void sgd(const AdamSettings& a) {
    const float lr = static_cast<float>(a.lr), wd = static_cast<float>(a.weight_decay);
    at::parallel_for(0, rows_, 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        if (touched_[row] || a.weight_decay != 0.0) {
          each_table(row, [&](int64_t o, int64_t dim) {
            sgd_update(P_ + o, G_ + o, dim, lr, wd);
          });
        }
        touched_[row] = 0;
      }
    });
    sgd_update(P_ + dense_start_, G_ + dense_start_, numel_ - dense_start_, lr, wd);
  }

  // Adam: the tables row by row (lazy: only the rows the batch touched), then the dense tower
  // and head
  void adam(const int64_t* bu, const int64_t* bi, int64_t n, double step, bool lazy,
            const AdamSettings& a) {
    const AdamCoefficients c = adam_coefficients(step, a);
    // SparseAdam adds eps to sqrt(v) before the bias correction: eps / sqrt(1 - beta2^t) here
    AdamCoefficients row_c = c;
    if (lazy) row_c.eps = static_cast<float>(a.eps * c.inv_bias2_sqrt);
    if (lazy) {
      lazy_rows(bu, bi, n, row_c);
    } else {
      const bool decay_only_ok = a.weight_decay == 0.0;  // else every gradient is non-zero
      at::parallel_for(0, rows_, 256, [&](int64_t begin, int64_t end) {
        TORCHCF_FLUSH_DENORMALS();  // moments of rarely seen rows decay into denormals
        for (int64_t row = begin; row < end; ++row) {
          adam_row(row, touched_[row] || !decay_only_ok, row_c);
        }
      });
    }
    at::parallel_for(0, numel_ - dense_start_, 1 << 14, [&](int64_t begin, int64_t end) {
      const int64_t o = dense_start_ + begin;
      adam_full(P_ + o, G_ + o, M_ + o, S_ + o, end - begin, c);
    });
  }

 private:
  // the flat buffer's layout (NeuMF's GMF table, the MLP table, each layer's weight and
  // bias, the head), checked against its size
  void layout() {
    mlp_table_ = rows_ * shape_.gmf_dim;
    dense_start_ = mlp_table_ + rows_ * shape_.width;
    weight_at_.resize(layers_);
    bias_at_.resize(layers_);
    fan_in_.resize(layers_);
    int64_t offset = dense_start_, in = 2 * shape_.width;
    for (int64_t l = 0; l < layers_; ++l) {
      fan_in_[l] = in;
      weight_at_[l] = offset;
      offset += shape_.layer_widths[l] * in;
      bias_at_[l] = offset;
      offset += shape_.layer_widths[l];
      in = shape_.layer_widths[l];
    }
    last_ = in;
    head_at_ = offset;
    numel_ = offset + shape_.gmf_dim + last_ + 1;
    TORCH_CHECK(b_.flat.numel() == numel_, "flat buffer size mismatch: ", b_.flat.numel(),
                " vs ", numel_);
  }

  // weights and gradients as tensors for the matrix products; activations in reused buffers
  void buffers(int64_t bs) {
    for (int64_t l = 0; l < layers_; ++l) {
      const int64_t out = shape_.layer_widths[l], size = out * fan_in_[l];
      weight_.push_back(b_.flat.narrow(0, weight_at_[l], size).view({out, fan_in_[l]}));
      weight_grad_.push_back(b_.grad.narrow(0, weight_at_[l], size).view({out, fan_in_[l]}));
      act_.push_back(torch::empty({bs, out}, torch::kFloat32));
      act_grad_.push_back(torch::empty({bs, out}, torch::kFloat32));
      keep_.push_back(drop_.threshold > 0 ? torch::empty({bs, out}, torch::kFloat32)
                                          : torch::Tensor());
    }
    x_ = torch::empty({bs, 2 * shape_.width}, torch::kFloat32);
    x_grad_ = torch::empty({bs, 2 * shape_.width}, torch::kFloat32);
  }

  void layer_forward(int64_t l, int64_t n, double step) {
    torch::Tensor a = act_[l].narrow(0, 0, n);
    at::mm_out(a, l == 0 ? xn_ : act_[l - 1].narrow(0, 0, n), weight_[l].t());
    float* A = a.data_ptr<float>();
    const float* bias = P_ + bias_at_[l];
    const int64_t out = shape_.layer_widths[l];
    const bool dropout = drop_.threshold > 0;
    float* K = nullptr;
    if (dropout) {
      K = keep_[l].data_ptr<float>();
      fill_keep(K, n * out, static_cast<uint64_t>(drop_.seed), static_cast<int64_t>(step), l,
                drop_.threshold, static_cast<float>(drop_.scale));
    }
    for (int64_t k = 0; k < n; ++k) {  // h = relu(a + b) * keep
      float* row = A + k * out;
      const float* kr = dropout ? K + k * out : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < out; ++j) {
        const float v = std::max(row[j] + bias[j], 0.0f);
        row[j] = dropout ? v * kr[j] : v;
      }
    }
  }

  // the layer's da in place of its dh; its bias gradient, the column sums, as it goes
  void activation_grad(int64_t l, int64_t n) {
    const bool dropout = drop_.threshold > 0;
    float* D = act_grad_[l].data_ptr<float>();
    const float* A = act_[l].data_ptr<float>();
    const float* K = dropout ? keep_[l].data_ptr<float>() : nullptr;
    float* gb = G_ + bias_at_[l];
    const int64_t out = shape_.layer_widths[l];
    for (int64_t k = 0; k < n; ++k) {
      float* dr = D + k * out;
      const float* ar = A + k * out;
      const float* kr = dropout ? K + k * out : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < out; ++j) {
        const float d = ar[j] > 0.0f ? (dropout ? dr[j] * kr[j] : dr[j]) : 0.0f;
        dr[j] = d;
        gb[j] += d;
      }
    }
  }

  // a row's parameters in each table: fn(offset, length)
  template <typename Fn>
  void each_table(int64_t row, const Fn& fn) const {
    if (shape_.gmf_dim > 0) fn(row * shape_.gmf_dim, shape_.gmf_dim);
    fn(mlp_table_ + row * shape_.width, shape_.width);
  }

  void adam_row(int64_t row, bool full, const AdamCoefficients& c) {
    each_table(row, [&](int64_t o, int64_t dim) {
      if (full) {
        adam_full(P_ + o, G_ + o, M_ + o, S_ + o, dim, c);
      } else {
        adam_decay(P_ + o, M_ + o, S_ + o, dim, c);
      }
    });
    touched_[row] = 0;
  }

  // lazy Adam: the rows of the batch, each once, their moments fetched ahead
  void lazy_rows(const int64_t* bu, const int64_t* bi, int64_t n, const AdamCoefficients& c) {
    touched_rows_.clear();
    for (int64_t k = 0; k < n; ++k) {
      for (const int64_t row : {bu[k], bi[k]}) {
        if (touched_[row] == 1) {
          touched_[row] = 2;  // listed
          touched_rows_.push_back(row);
        }
      }
    }
    const int64_t count = static_cast<int64_t>(touched_rows_.size());
    at::parallel_for(0, count, 64, [&](int64_t begin, int64_t end) {
      TORCHCF_FLUSH_DENORMALS();
      for (int64_t r = begin; r < end; ++r) {
        if (r + 2 < end) {  // the next rows' moments: cache misses, fetched ahead
          each_table(touched_rows_[r + 2], [&](int64_t o, int64_t) {
            __builtin_prefetch(M_ + o);
            __builtin_prefetch(S_ + o);
            __builtin_prefetch(P_ + o);
          });
        }
        adam_row(touched_rows_[r], true, c);
      }
    });
  }

  const Buffers& b_;
  const TowerShape& shape_;
  const DropoutSettings& drop_;
  const int64_t rows_, layers_;
  int64_t mlp_table_ = 0, dense_start_ = 0, head_at_ = 0, last_ = 0, numel_ = 0;
  std::vector<int64_t> weight_at_, bias_at_, fan_in_;
  float *P_ = nullptr, *G_ = nullptr, *M_ = nullptr, *S_ = nullptr;
  std::vector<torch::Tensor> weight_, weight_grad_, act_, act_grad_, keep_;
  torch::Tensor x_, x_grad_, xn_;
  std::vector<uint8_t> touched_;
  std::vector<int64_t> touched_rows_;
};

}  // namespace

// As dot_adam_batches: samples users[order[k]], items[order[k]], labels[order[k]] in consecutive
// batches of batch_size; each one's logit before its batch's update goes to logits[order[k]]
// (unless empty); returns the summed BCE loss. `exp_avg_sqrt` holds sqrt(exp_avg_sq).
// A dropout threshold of 0 turns dropout off.
double tower_adam_batches(const Buffers& buffers, const Batches& batches, const TowerShape& shape,
                          Optimizer optimizer, const AdamSettings& adam,
                          const DropoutSettings& dropout) {
  check_buffers(buffers, batches);
  const KeepFloatState keep_float_state;
  const Samples samples = gather_samples(batches, shape.num_users, shape.num_items);
  const int64_t total = batches.order.numel(), batch_size = batches.batch_size;
  at::NoGradGuard no_grad;
  TowerRun run(buffers, shape, dropout, std::min(batch_size, std::max<int64_t>(total, 1)));
  std::vector<float> sz(total), sg(total);
  double loss_sum = 0.0, step = buffers.steps.item<double>();
  TORCHCF_FLUSH_DENORMALS();
  for (int64_t start = 0; start < total; start += batch_size) {
    const int64_t n = std::min(batch_size, total - start);
    // row numbers in one table: users, then items
    const int64_t* bu = samples.user.data() + start;
    const int64_t* bi = samples.item.data() + start;
    step += 1.0;
    run.forward(bu, bi, n, step);
    run.head(bu, bi, samples.label.data() + start, n, sz.data() + start, sg.data() + start,
             loss_sum);
    run.backward(sg.data() + start, n);
    run.row_gradients(bu, bi, sg.data() + start, n);
    if (optimizer == Optimizer::kSgd) {
      run.sgd(adam);
    } else {
      run.adam(bu, bi, n, step, optimizer == Optimizer::kLazyAdam, adam);
    }
  }
  torch::Tensor logits = batches.logits;
  scatter_logits(logits, batches.order, sz);
  buffers.steps.fill_(step);
  return loss_sum;
}
