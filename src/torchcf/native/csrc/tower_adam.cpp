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
// fine-tuning after pretraining). Under --amp (TowerRun<c10::BFloat16>) the products, the
// activations and their gradients are bfloat16, as autocast would have them; the head, the
// per-row and bias sums and every parameter, gradient and moment stay float.
#include "adam.h"

#include <c10/core/GradMode.h>

#include <cstring>
#include <type_traits>

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

// The layer's mask elements begin <= j < end (begin a multiple of 8) into keep[j - begin]: 0
// where the unit is dropped (its random byte < threshold), else scale. Element j's byte depends
// on j only, so pieces of a layer can be drawn by different threads and give the same masks.
void fill_keep(float* keep, int64_t begin, int64_t end, uint64_t seed, int64_t step,
               int64_t layer, int64_t threshold, float scale) {
  const uint64_t key = mix(seed ^ mix(static_cast<uint64_t>(step) * 64 + layer));
  for (int64_t j = begin; j < end; j += 8) {
    const uint64_t bits = mix(key + static_cast<uint64_t>(j >> 3));
    const int64_t stop = std::min<int64_t>(8, end - j);
    float* to = keep + (j - begin);
    for (int64_t b = 0; b < stop; ++b) {
      to[b] = static_cast<int64_t>((bits >> (8 * b)) & 0xFF) >= threshold ? scale : 0.0f;
    }
  }
}

// [0, n) in `parts` fixed pieces, fn(part, begin, end) on the threads: a reduction that adds
// the pieces' partial sums in piece order gives the same result whatever thread ran which piece
template <typename Fn>
void in_parts(int64_t n, int64_t parts, const Fn& fn) {
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t part = first; part < last; ++part) fn(part, n * part / parts, n * (part + 1) / parts);
  });
}

// float <-> bfloat16 by bits (round to nearest even), simple enough to vectorise in the
// activations' loops (c10::BFloat16's own conversion checks for NaN per element)
inline float widen(float v) { return v; }
inline float widen(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
template <typename T>
inline T narrow_to(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    // a NaN stays a NaN (rounding could carry it into the sign bit): divergence stays visible
    const uint16_t out = v != v ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
    return c10::BFloat16(out, c10::BFloat16::from_bits());
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
  fill_keep(keep.data_ptr<float>(), 0, count, static_cast<uint64_t>(seed), step, layer, threshold,
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
// T is the element type of the matrix products' operands and results (the activations, their
// gradients, the gathered rows): float, or c10::BFloat16 under --amp (bfloat16 products, as
// autocast multiplies; sums, the head, the gradients' totals and Adam stay in float).
template <typename T>
class TowerRun {
  static constexpr bool kFloat = std::is_same_v<T, float>;

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

  // h_0 = relu(W_0 [p_u; q_i] + b_0) * keep_0, then h_l = relu(W_l h_{l-1} + b_l) * keep_l.
  // The first layer is W_0 = [W_u | W_i]: at large batches, where a batch names fewer distinct
  // rows than it has samples, W_u p and W_i q are multiplied once per distinct row and added per
  // sample (the same sums, fewer products); otherwise x = [p_u; q_i] is gathered per sample.
  void forward(const int64_t* bu, const int64_t* bi, int64_t n, double step) {
    if constexpr (!kFloat) {  // this step's weights as the products' operands
      for (int64_t l = 0; l < layers_; ++l) weight_t_[l].copy_(weight_[l]);
    }
    by_rows_ = distinct_rows(bu, bi, n);
    if (by_rows_) {
      for (int side = 0; side < 2; ++side) side_forward(side);
    } else {
      gather_x(bu, bi, n);
    }
    for (int64_t l = 0; l < layers_; ++l) layer_forward(l, n, step);
  }

  // logits, g = (sigmoid(z) - y) / n per sample, the loss added to `loss`; the head's gradient
  void head(const int64_t* bu, const int64_t* bi, const float* y, int64_t n, float* z_out,
            float* g_out, double& loss) {
    const int64_t gmf_dim = shape_.gmf_dim, last = last_;
    const float* head = P_ + head_at_;  // [h_G (gmf_dim); h_M (last); b]
    float* head_grad = G_ + head_at_;
    const T* H = act_[layers_ - 1].template data_ptr<T>();
    const float* hg = head;
    const float* hm = head + gmf_dim;
    const float inv_n = 1.0f / static_cast<float>(n);
    const int64_t parts = n >= 1024 ? at::get_num_threads() : 1;
    // per piece: its loss, then its sums of g p_u q_i (GMF head), of g (bias) and of g h_last
    // (the MLP head)
    const int64_t width = gmf_dim + 1 + last;
    std::vector<double> part_loss(parts, 0.0);
    std::vector<float> part_sums(parts * width, 0.0f);
    in_parts(n, parts, [&](int64_t part, int64_t begin, int64_t end) {
      float* sums = part_sums.data() + part * width;
      float* mlp_sums = sums + gmf_dim + 1;
      double piece_loss = 0.0;
      for (int64_t k = begin; k < end; ++k) {
        const T* hk = H + k * last;
        const float* pu = P_ + bu[k] * gmf_dim;  // NeuMF's GMF rows (unused for MLP)
        const float* qi = P_ + bi[k] * gmf_dim;
        float z = head[gmf_dim + last];
#pragma omp simd reduction(+ : z)
        for (int64_t j = 0; j < last; ++j) z += hm[j] * widen(hk[j]);
        float zg = 0.0f;
#pragma omp simd reduction(+ : zg)
        for (int64_t d = 0; d < gmf_dim; ++d) zg += hg[d] * pu[d] * qi[d];
        z += zg;
        float sigmoid;
        piece_loss += bce(z, y[k], &sigmoid);
        z_out[k] = z;
        const float g = (sigmoid - y[k]) * inv_n;
        g_out[k] = g;
#pragma omp simd
        for (int64_t d = 0; d < gmf_dim; ++d) sums[d] += g * pu[d] * qi[d];
        sums[gmf_dim] += g;
#pragma omp simd
        for (int64_t j = 0; j < last; ++j) mlp_sums[j] += g * widen(hk[j]);
      }
      part_loss[part] = piece_loss;
    });
    for (int64_t part = 0; part < parts; ++part) {
      loss += part_loss[part];
      const float* sums = part_sums.data() + part * width;
      for (int64_t d = 0; d < gmf_dim; ++d) head_grad[d] += sums[d];
      head_grad[gmf_dim + last] += sums[gmf_dim];
      for (int64_t j = 0; j < last; ++j) head_grad[gmf_dim + j] += sums[gmf_dim + 1 + j];
    }
  }

  // back through the tower to dL/dx: da_l = dh_l * relu'(a_l) * keep_l (h_l > 0 exactly where
  // both the unit was active and kept; the factor there is keep_l)
  void backward(const float* g, int64_t n) {
    const float* hm = P_ + head_at_ + shape_.gmf_dim;
    T* D = act_grad_[layers_ - 1].template data_ptr<T>();
    const int64_t last = last_;
    at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
#pragma omp simd
        for (int64_t j = 0; j < last; ++j) D[k * last + j] = narrow_to<T>(g[k] * hm[j]);
      }
    });
    activation_grad(layers_ - 1, n);
    for (int64_t l = layers_ - 1; l >= 0; --l) {
      torch::Tensor da = act_grad_[l].narrow(0, 0, n);
      if (l == 0 && by_rows_) {
        for (int side = 0; side < 2; ++side) side_backward(side, n);
        break;
      }
      torch::Tensor below = l == 0 ? xn_ : act_[l - 1].narrow(0, 0, n);
      grad_product(weight_grad_[l], da.t(), below, weight_grad_t_[l]);
      torch::Tensor dbelow = l == 0 ? x_grad_.narrow(0, 0, n) : act_grad_[l - 1].narrow(0, 0, n);
      at::mm_out(dbelow, da, weight_t_[l]);
      if (l > 0) activation_grad(l - 1, n);
    }
  }

  // the rows' gradients, each row summed by the thread owning it, samples in batch order (by
  // distinct rows: each row's MLP gradient is already summed, one row per thread at a time)
  void row_gradients(const int64_t* bu, const int64_t* bi, const float* g, int64_t n) {
    const int64_t width = shape_.width, gmf_dim = shape_.gmf_dim, rows = rows_;
    if (by_rows_) {
      for (int side = 0; side < 2; ++side) {
        const std::vector<int64_t>& list = rows_of_[side];
        const T* DP = side_grad_[side].template data_ptr<T>();
        at::parallel_for(0, static_cast<int64_t>(list.size()), 64, [&](int64_t b, int64_t e) {
          for (int64_t j = b; j < e; ++j) {
            float* gr = G_ + mlp_table_ + list[j] * width;
            const T* dp = DP + j * width;
#pragma omp simd
            for (int64_t d = 0; d < width; ++d) gr[d] += widen(dp[d]);
            touched_[list[j]] = 1;
          }
        });
      }
      if (gmf_dim == 0) return;
    }
    const bool mlp_rows = !by_rows_;
    const T* DX = mlp_rows ? x_grad_.template data_ptr<T>() : nullptr;
    const float* hg = P_ + head_at_;
    const int64_t parts = n >= 64 ? at::get_num_threads() : 1;
    in_parts(rows, parts, [&](int64_t, int64_t lo, int64_t hi) {
      for (int64_t k = 0; k < n; ++k) {
        const int64_t u = bu[k], i = bi[k];
        for (int side = 0; side < 2; ++side) {
          const int64_t row = side == 0 ? u : i, other = side == 0 ? i : u;
          if (row < lo || row >= hi) continue;
          if (mlp_rows) {
            float* gr = G_ + mlp_table_ + row * width;
            const T* dx = DX + k * 2 * width + side * width;
#pragma omp simd
            for (int64_t d = 0; d < width; ++d) gr[d] += widen(dx[d]);
          }
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
  // (of type T; in bfloat16, the weights' copies, the products' gradients before they are
  // added in float, and the per-row sums in float)
  void buffers(int64_t bs) {
    const auto t = kFloat ? torch::kFloat32 : torch::kBFloat16;
    for (int64_t l = 0; l < layers_; ++l) {
      const int64_t out = shape_.layer_widths[l], size = out * fan_in_[l];
      weight_.push_back(b_.flat.narrow(0, weight_at_[l], size).view({out, fan_in_[l]}));
      weight_grad_.push_back(b_.grad.narrow(0, weight_at_[l], size).view({out, fan_in_[l]}));
      weight_t_.push_back(kFloat ? weight_[l] : torch::empty({out, fan_in_[l]}, t));
      weight_grad_t_.push_back(kFloat ? torch::Tensor() : torch::empty({out, fan_in_[l]}, t));
      act_.push_back(torch::empty({bs, out}, t));
      act_grad_.push_back(torch::empty({bs, out}, t));
    }
    const int64_t width = shape_.width, out0 = shape_.layer_widths[0];
    x_ = torch::empty({bs, 2 * width}, t);
    x_grad_ = torch::empty({bs, 2 * width}, t);
    slot_.assign(rows_, -1);
    for (int side = 0; side < 2; ++side) {
      // W_u = W_0[:, :width], W_i = W_0[:, width:] and their gradients (strided views)
      side_weight_[side] = weight_t_[0].narrow(1, side * width, width);
      side_rows_[side] = torch::empty({bs, width}, t);
      side_act_[side] = torch::empty({bs, out0}, t);
      side_sum_[side] = torch::empty({bs, out0}, t);
      side_grad_[side] = torch::empty({bs, width}, t);
      side_wgrad_[side] = torch::empty({out0, width}, t);
      sample_slot_[side].resize(bs);
    }
    if (!kFloat) side_acc_ = torch::empty({bs, out0}, torch::kFloat32);
  }

  // grad = a b, in float: bfloat16 products are rounded into `scratch`, then copied
  static void grad_product(torch::Tensor& grad, const torch::Tensor& a, const torch::Tensor& b,
                           torch::Tensor& scratch) {
    if constexpr (kFloat) {
      at::mm_out(grad, a, b);
    } else {
      at::mm_out(scratch, a, b);
      grad.copy_(scratch);
    }
  }

  // n values from float to T (a copy when T is float)
  static void store(T* to, const float* from, int64_t n) {
    if constexpr (kFloat) {
      std::memcpy(to, from, n * sizeof(float));
    } else {
#pragma omp simd
      for (int64_t d = 0; d < n; ++d) to[d] = narrow_to<T>(from[d]);
    }
  }

  // the batch's distinct user and item rows (rows_of_), each sample's place among them
  // (sample_slot_); true when there are fewer of them than samples, so products per row pay
  bool distinct_rows(const int64_t* bu, const int64_t* bi, int64_t n) {
    if (n < 256) return false;
    for (int side = 0; side < 2; ++side) {
      const int64_t* rows = side == 0 ? bu : bi;
      std::vector<int64_t>& list = rows_of_[side];
      int32_t* place = sample_slot_[side].data();
      list.clear();
      for (int64_t k = 0; k < n; ++k) {
        int32_t& slot = slot_[rows[k]];
        if (slot < 0) {
          slot = static_cast<int32_t>(list.size());
          list.push_back(rows[k]);
        }
        place[k] = slot;
      }
      for (const int64_t row : list) slot_[row] = -1;
    }
    return static_cast<int64_t>(rows_of_[0].size() + rows_of_[1].size()) <= n;
  }

  // x = [p_u; q_i] per sample (the random rows are cache misses: fetched a few rows ahead)
  void gather_x(const int64_t* bu, const int64_t* bi, int64_t n) {
    const int64_t width = shape_.width;
    xn_ = x_.narrow(0, 0, n);
    T* X = xn_.template data_ptr<T>();
    const float* table = P_ + mlp_table_;
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        if (k + 4 < end) {
          __builtin_prefetch(table + bu[k + 4] * width);
          __builtin_prefetch(table + bi[k + 4] * width);
        }
        store(X + k * 2 * width, table + bu[k] * width, width);
        store(X + k * 2 * width + width, table + bi[k] * width, width);
      }
    });
  }

  // one side's distinct rows R and their first-layer products R W_side^T
  void side_forward(int side) {
    const std::vector<int64_t>& list = rows_of_[side];
    const int64_t count = static_cast<int64_t>(list.size()), width = shape_.width;
    T* R = side_rows_[side].template data_ptr<T>();
    const float* table = P_ + mlp_table_;
    at::parallel_for(0, count, 64, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) store(R + j * width, table + list[j] * width, width);
    });
    const int64_t padded = padded_rows(count);  // zero rows after the batch's
    std::fill(R + count * width, R + padded * width, narrow_to<T>(0.0f));
    torch::Tensor rows = side_rows_[side].narrow(0, 0, padded);
    torch::Tensor products = side_act_[side].narrow(0, 0, padded);
    at::mm_out(products, rows, side_weight_[side].t());
  }

  // bfloat16 products go through oneDNN, which builds (and caches, ~0.4 MB and ~5 ms each) a
  // primitive per shape: the distinct rows' products are padded with zero rows to a multiple of
  // 64, so a few shapes recur instead of a new one nearly every batch (float: MKL, unpadded)
  int64_t padded_rows(int64_t count) const {
    if constexpr (kFloat) return count;
    return std::min<int64_t>((count + 63) / 64 * 64, side_rows_[0].size(0));
  }

  // one side's first-layer gradients: the samples' da_0 summed per distinct row (S, each row
  // by the thread owning it, samples in batch order), then dW_side = S^T R and dR = S W_side
  void side_backward(int side, int64_t n) {
    const int64_t count = static_cast<int64_t>(rows_of_[side].size());
    const int64_t out0 = shape_.layer_widths[0];
    T* S = side_sum_[side].template data_ptr<T>();
    float* acc = kFloat ? reinterpret_cast<float*>(S) : side_acc_.data_ptr<float>();
    const T* DA = act_grad_[0].template data_ptr<T>();
    const int32_t* place = sample_slot_[side].data();
    const int64_t parts = at::get_num_threads();
    in_parts(count, parts, [&](int64_t, int64_t lo, int64_t hi) {
      std::memset(acc + lo * out0, 0, (hi - lo) * out0 * sizeof(float));
      for (int64_t k = 0; k < n; ++k) {
        const int64_t j = place[k];
        if (j < lo || j >= hi) continue;
        float* sj = acc + j * out0;
        const T* dk = DA + k * out0;
#pragma omp simd
        for (int64_t o = 0; o < out0; ++o) sj[o] += widen(dk[o]);
      }
      if constexpr (!kFloat) store(S + lo * out0, acc + lo * out0, (hi - lo) * out0);
    });
    const int64_t padded = padded_rows(count);  // zero sums for the zero rows
    std::fill(S + count * out0, S + padded * out0, narrow_to<T>(0.0f));
    torch::Tensor sums = side_sum_[side].narrow(0, 0, padded);
    torch::Tensor rows = side_rows_[side].narrow(0, 0, padded);
    at::mm_out(side_wgrad_[side], sums.t(), rows);
    weight_grad_[0].narrow(1, side * shape_.width, shape_.width).copy_(side_wgrad_[side]);
    torch::Tensor row_grads = side_grad_[side].narrow(0, 0, padded);
    at::mm_out(row_grads, sums, side_weight_[side]);
  }

  void layer_forward(int64_t l, int64_t n, double step) {
    torch::Tensor a = act_[l].narrow(0, 0, n);
    const bool from_rows = l == 0 && by_rows_;
    if (!from_rows) at::mm_out(a, l == 0 ? xn_ : act_[l - 1].narrow(0, 0, n), weight_t_[l].t());
    T* A = a.template data_ptr<T>();
    const float* bias = P_ + bias_at_[l];
    const int64_t out = shape_.layer_widths[l];
    const bool dropout = drop_.threshold > 0;
    const T* AU = from_rows ? side_act_[0].template data_ptr<T>() : nullptr;
    const T* AI = from_rows ? side_act_[1].template data_ptr<T>() : nullptr;
    const int32_t* su = sample_slot_[0].data();
    const int32_t* si = sample_slot_[1].data();
    // chunks of 8 samples (a chunk's mask elements start at a multiple of 8), the masks drawn
    // for 64 samples at a time: the backward pass needs none (h > 0 exactly where kept)
    constexpr int64_t kMaskRows = 64;
    at::parallel_for(0, (n + 7) / 8, 32, [&](int64_t begin, int64_t end) {
      std::vector<float> keep(dropout ? kMaskRows * out : 0, 1.0f);
      for (int64_t k = begin * 8, k1 = std::min(n, end * 8); k < k1; ++k) {  // relu(a + b) keep
        const int64_t m = k % kMaskRows;
        if (dropout && (m == 0 || k == begin * 8)) {
          fill_keep(keep.data() + m * out, k * out, std::min(k1, k - m + kMaskRows) * out,
                    static_cast<uint64_t>(drop_.seed), static_cast<int64_t>(step), l,
                    drop_.threshold, static_cast<float>(drop_.scale));
        }
        T* row = A + k * out;
        const float* kr = dropout ? keep.data() + m * out : nullptr;
        if (from_rows) {  // a = W_u p_u + W_i q_i
          const T* au = AU + su[k] * out;
          const T* ai = AI + si[k] * out;
#pragma omp simd
          for (int64_t j = 0; j < out; ++j) {
            const float v = std::max(widen(au[j]) + widen(ai[j]) + bias[j], 0.0f);
            row[j] = narrow_to<T>(dropout ? v * kr[j] : v);
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < out; ++j) {
            const float v = std::max(widen(row[j]) + bias[j], 0.0f);
            row[j] = narrow_to<T>(dropout ? v * kr[j] : v);
          }
        }
      }
    });
  }

  // the layer's da in place of its dh; its bias gradient, the column sums, per piece then
  // added in piece order
  void activation_grad(int64_t l, int64_t n) {
    const bool dropout = drop_.threshold > 0;
    T* D = act_grad_[l].template data_ptr<T>();
    const T* A = act_[l].template data_ptr<T>();
    const float factor = dropout ? static_cast<float>(drop_.scale) : 1.0f;  // keep where h > 0
    float* gb = G_ + bias_at_[l];
    const int64_t out = shape_.layer_widths[l];
    const int64_t parts = n >= 1024 ? at::get_num_threads() : 1;
    std::vector<float> part_sums(parts * out, 0.0f);
    in_parts(n, parts, [&](int64_t part, int64_t begin, int64_t end) {
      const float f = factor;  // a local: read through the closure it could alias the sums
      float* sums = part_sums.data() + part * out;
      for (int64_t k = begin; k < end; ++k) {
        T* dr = D + k * out;
        const T* ar = A + k * out;
#pragma omp simd
        for (int64_t j = 0; j < out; ++j) {
          const float dh = widen(dr[j]);
          const float d = widen(ar[j]) > 0.0f ? dh * f : 0.0f;
          dr[j] = narrow_to<T>(d);
          sums[j] += d;
        }
      }
    });
    for (int64_t part = 0; part < parts; ++part) {
      for (int64_t j = 0; j < out; ++j) gb[j] += part_sums[part * out + j];
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
  std::vector<torch::Tensor> weight_, weight_grad_, weight_t_, weight_grad_t_, act_, act_grad_;
  torch::Tensor x_, x_grad_, xn_;
  // the first layer by distinct rows, per side (0: users, 1: items)
  bool by_rows_ = false;
  std::vector<int32_t> slot_;  // a row's place in its side's list while the batch is read
  std::vector<int64_t> rows_of_[2];
  std::vector<int32_t> sample_slot_[2];
  torch::Tensor side_weight_[2], side_rows_[2], side_act_[2], side_sum_[2], side_grad_[2],
      side_wgrad_[2], side_acc_;
  std::vector<uint8_t> touched_;
  std::vector<int64_t> touched_rows_;
};

}  // namespace

namespace {

template <typename T>
double tower_run(const Buffers& buffers, const Batches& batches, const TowerShape& shape,
                 Optimizer optimizer, const AdamSettings& adam, const DropoutSettings& dropout) {
  const KeepFloatState keep_float_state;
  const Samples samples = gather_samples(batches, shape.num_users, shape.num_items);
  const int64_t total = batches.order.numel(), batch_size = batches.batch_size;
  at::NoGradGuard no_grad;
  TowerRun<T> run(buffers, shape, dropout, std::min(batch_size, std::max<int64_t>(total, 1)));
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

}  // namespace

// As dot_adam_batches: samples users[order[k]], items[order[k]], labels[order[k]] in consecutive
// batches of batch_size; each one's logit before its batch's update goes to logits[order[k]]
// (unless empty); returns the summed BCE loss. `exp_avg_sqrt` holds sqrt(exp_avg_sq).
// A dropout threshold of 0 turns dropout off.
// With amp the tower's matrix products are bfloat16 (TowerRun<c10::BFloat16>), else float.
double tower_adam_batches(const Buffers& buffers, const Batches& batches, const TowerShape& shape,
                          Optimizer optimizer, const AdamSettings& adam,
                          const DropoutSettings& dropout, bool amp) {
  check_buffers(buffers, batches);
  return amp ? tower_run<c10::BFloat16>(buffers, batches, shape, optimizer, adam, dropout)
             : tower_run<float>(buffers, batches, shape, optimizer, adam, dropout);
}
