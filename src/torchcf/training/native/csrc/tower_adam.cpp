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

constexpr int64_t kAdam = 0, kLazyAdam = 1, kSgd = 2;

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

// As dot_adam_batches: samples users[order[k]], items[order[k]], labels[order[k]] in consecutive
// batches of batch_size; each one's logit before its batch's update goes to logits[order[k]]
// (unless empty); returns the summed BCE loss. `exp_avg_sqrt` holds sqrt(exp_avg_sq).
// dropout_threshold 0 turns dropout off.
double tower_adam_batches(torch::Tensor flat, torch::Tensor grad, torch::Tensor exp_avg,
                          torch::Tensor exp_avg_sqrt, torch::Tensor steps, torch::Tensor users,
                          torch::Tensor items, torch::Tensor labels, torch::Tensor order,
                          torch::Tensor logits, int64_t num_users, int64_t num_items,
                          int64_t gmf_dim, int64_t width, std::vector<int64_t> layer_widths,
                          int64_t batch_size, double lr, double beta1, double beta2, double eps,
                          double weight_decay, int64_t optimizer, int64_t dropout_threshold,
                          double dropout_scale, int64_t seed) {
  for (const auto* t : {&flat, &grad, &exp_avg, &exp_avg_sqrt, &logits}) {
    check(*t, torch::kFloat32, "a parameter, moment or logit buffer");
  }
  TORCH_CHECK(batch_size > 0, "batch_size must be positive");
  TORCH_CHECK(!layer_widths.empty(), "the tower needs a layer");
  TORCH_CHECK(optimizer >= kAdam && optimizer <= kSgd, "optimizer: 0 adam, 1 lazy adam, 2 sgd");
  const bool lazy = optimizer == kLazyAdam, sgd = optimizer == kSgd;
  const Samples samples =
      gather_samples(users, items, labels, order, logits, num_users, num_items);
  const std::vector<int64_t>& su = samples.user;  // row numbers in a table: users, then items
  const std::vector<int64_t>& si = samples.item;
  const std::vector<float>& sy = samples.label;
  const int64_t total = order.numel();
  const int64_t rows = num_users + num_items;
  const int64_t layers = static_cast<int64_t>(layer_widths.size());

  // the layout, checked against the buffer's size
  const int64_t gmf_table = 0, mlp_table = rows * gmf_dim;
  const int64_t dense_start = mlp_table + rows * width;
  std::vector<int64_t> weight_at(layers), bias_at(layers), fan_in(layers);
  int64_t offset = dense_start, in = 2 * width;
  for (int64_t l = 0; l < layers; ++l) {
    fan_in[l] = in;
    weight_at[l] = offset;
    offset += layer_widths[l] * in;
    bias_at[l] = offset;
    offset += layer_widths[l];
    in = layer_widths[l];
  }
  const int64_t last = in, head_at = offset;
  offset += gmf_dim + last + 1;
  TORCH_CHECK(flat.numel() == offset, "flat buffer size mismatch: ", flat.numel(), " vs ",
              offset);

  at::NoGradGuard no_grad;
  float* P = flat.data_ptr<float>();
  float* G = grad.data_ptr<float>();
  float* M = exp_avg.data_ptr<float>();
  float* S = exp_avg_sqrt.data_ptr<float>();
  const float* head = P + head_at;  // [h_G (gmf_dim); h_M (last); b]
  float* head_grad = G + head_at;
  const bool dropout = dropout_threshold > 0;

  // weights and gradients as tensors for the matrix products; activations in reused buffers
  const int64_t bs = std::min(batch_size, std::max<int64_t>(total, 1));
  std::vector<torch::Tensor> weight(layers), weight_grad(layers);
  std::vector<torch::Tensor> act(layers), act_grad(layers), keep(layers);
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t out = layer_widths[l];
    weight[l] = flat.narrow(0, weight_at[l], out * fan_in[l]).view({out, fan_in[l]});
    weight_grad[l] = grad.narrow(0, weight_at[l], out * fan_in[l]).view({out, fan_in[l]});
    act[l] = torch::empty({bs, out}, torch::kFloat32);
    act_grad[l] = torch::empty({bs, out}, torch::kFloat32);
    if (dropout) keep[l] = torch::empty({bs, out}, torch::kFloat32);
  }
  torch::Tensor x = torch::empty({bs, 2 * width}, torch::kFloat32);
  torch::Tensor x_grad = torch::empty({bs, 2 * width}, torch::kFloat32);
  std::vector<float> sz(total), sg(total);
  std::vector<uint8_t> touched(rows, 0);
  std::vector<int64_t> touched_rows;  // lazy Adam: the rows of the batch, each once
  double loss_sum = 0.0, step = steps.item<double>();
  TORCHCF_FLUSH_DENORMALS();

  for (int64_t start = 0; start < total; start += batch_size) {
    const int64_t n = std::min(batch_size, total - start);
    const int64_t* bu = su.data() + start;
    const int64_t* bi = si.data() + start;
    step += 1.0;
    // forward: x = [p_u; q_i], then the layers
    torch::Tensor xn = x.narrow(0, 0, n);
    float* X = xn.data_ptr<float>();
    // (the random rows are cache misses: both cores fetch, a few rows ahead)
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        if (k + 4 < end) {
          __builtin_prefetch(P + mlp_table + bu[k + 4] * width);
          __builtin_prefetch(P + mlp_table + bi[k + 4] * width);
        }
        std::memcpy(X + k * 2 * width, P + mlp_table + bu[k] * width, width * sizeof(float));
        std::memcpy(X + k * 2 * width + width, P + mlp_table + bi[k] * width,
                    width * sizeof(float));
      }
    });
    for (int64_t l = 0; l < layers; ++l) {
      torch::Tensor a = act[l].narrow(0, 0, n);
      at::mm_out(a, l == 0 ? xn : act[l - 1].narrow(0, 0, n), weight[l].t());
      float* A = a.data_ptr<float>();
      const float* b = P + bias_at[l];
      const int64_t out = layer_widths[l];
      float* K = nullptr;
      if (dropout) {
        K = keep[l].data_ptr<float>();
        fill_keep(K, n * out, static_cast<uint64_t>(seed), static_cast<int64_t>(step), l,
                  dropout_threshold, static_cast<float>(dropout_scale));
      }
      for (int64_t k = 0; k < n; ++k) {  // h = relu(a + b) * keep
        float* row = A + k * out;
        const float* kr = dropout ? K + k * out : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < out; ++j) {
          const float v = std::max(row[j] + b[j], 0.0f);
          row[j] = dropout ? v * kr[j] : v;
        }
      }
    }
    // logits, loss, g; the head's gradient
    const float* H = act[layers - 1].data_ptr<float>();
    const float* hg = head;
    const float* hm = head + gmf_dim;
    const float inv_n = 1.0f / static_cast<float>(n);
    float bias_g = 0.0f;
    for (int64_t k = 0; k < n; ++k) {
      const float* hk = H + k * last;
      const float* pu = P + gmf_table + bu[k] * gmf_dim;  // NeuMF's GMF rows (unused for MLP)
      const float* qi = P + gmf_table + bi[k] * gmf_dim;
      float z = head[gmf_dim + last];
#pragma omp simd reduction(+ : z)
      for (int64_t j = 0; j < last; ++j) z += hm[j] * hk[j];
      float zg = 0.0f;
#pragma omp simd reduction(+ : zg)
      for (int64_t d = 0; d < gmf_dim; ++d) zg += hg[d] * pu[d] * qi[d];
      z += zg;
      float sigmoid;
      loss_sum += bce(z, sy[start + k], &sigmoid);
      sz[start + k] = z;
      const float g = (sigmoid - sy[start + k]) * inv_n;
      sg[start + k] = g;
      bias_g += g;
      float* ghm = head_grad + gmf_dim;
#pragma omp simd
      for (int64_t j = 0; j < last; ++j) ghm[j] += g * hk[j];
#pragma omp simd
      for (int64_t d = 0; d < gmf_dim; ++d) head_grad[d] += g * pu[d] * qi[d];
    }
    head_grad[gmf_dim + last] += bias_g;
    // back through the tower: da_l = dh_l * relu'(a_l) * keep_l (h_l > 0 exactly where both
    // the unit was active and kept; the factor there is keep_l)
    const float* g_of = sg.data() + start;
    // the layer's da in place of its dh; its bias gradient, the column sums, as it goes
    const auto activation_grad = [&](int64_t l) {
      float* D = act_grad[l].data_ptr<float>();
      const float* A = act[l].data_ptr<float>();
      const float* K = dropout ? keep[l].data_ptr<float>() : nullptr;
      float* gb = G + bias_at[l];
      const int64_t out = layer_widths[l];
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
    };
    {
      float* D = act_grad[layers - 1].data_ptr<float>();
      for (int64_t k = 0; k < n; ++k) {
#pragma omp simd
        for (int64_t j = 0; j < last; ++j) D[k * last + j] = g_of[k] * hm[j];
      }
      activation_grad(layers - 1);
    }
    for (int64_t l = layers - 1; l >= 0; --l) {
      torch::Tensor da = act_grad[l].narrow(0, 0, n);
      torch::Tensor below = l == 0 ? xn : act[l - 1].narrow(0, 0, n);
      at::mm_out(weight_grad[l], da.t(), below);
      torch::Tensor dbelow = l == 0 ? x_grad.narrow(0, 0, n) : act_grad[l - 1].narrow(0, 0, n);
      at::mm_out(dbelow, da, weight[l]);
      if (l > 0) activation_grad(l - 1);
    }
    // the rows' gradients, each row summed by the thread owning it, samples in batch order
    const float* DX = x_grad.data_ptr<float>();
    const int64_t parts = n >= 64 ? at::get_num_threads() : 1;
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      for (int64_t part = part_begin; part < part_end; ++part) {
        const int64_t lo = rows * part / parts, hi = rows * (part + 1) / parts;
        for (int64_t k = 0; k < n; ++k) {
          const int64_t u = bu[k], i = bi[k];
          for (int side = 0; side < 2; ++side) {
            const int64_t row = side == 0 ? u : i, other = side == 0 ? i : u;
            if (row < lo || row >= hi) continue;
            float* gr = G + mlp_table + row * width;
            const float* dx = DX + k * 2 * width + side * width;
#pragma omp simd
            for (int64_t d = 0; d < width; ++d) gr[d] += dx[d];
            if (gmf_dim > 0) {
              float* gg = G + gmf_table + row * gmf_dim;
              const float* q = P + gmf_table + other * gmf_dim;
              const float gk = g_of[k];
#pragma omp simd
              for (int64_t d = 0; d < gmf_dim; ++d) gg[d] += gk * hg[d] * q[d];
            }
            touched[row] = 1;
          }
        }
      }
    });
    // a row's parameters in each table: fn(offset, length)
    const auto each_table = [&](int64_t row, const auto& fn) {
      if (gmf_dim > 0) fn(gmf_table + row * gmf_dim, gmf_dim);
      fn(mlp_table + row * width, width);
    };
    if (sgd) {  // rows no sample touched have no gradient: only weight decay moves them
      const float lr_f = static_cast<float>(lr), wd_f = static_cast<float>(weight_decay);
      at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          if (touched[row] || weight_decay != 0.0) {
            each_table(row, [&](int64_t o, int64_t dim) {
              sgd_update(P + o, G + o, dim, lr_f, wd_f);
            });
          }
          touched[row] = 0;
        }
      });
      sgd_update(P + dense_start, G + dense_start, flat.numel() - dense_start, lr_f, wd_f);
      continue;
    }
    // Adam: the tables row by row, then the dense tower and head
    const AdamCoefficients c = adam_coefficients(step, lr, beta1, beta2, eps, weight_decay);
    const bool decay_only_ok = weight_decay == 0.0;  // else every gradient is non-zero
    // SparseAdam adds eps to sqrt(v) before the bias correction: eps / sqrt(1 - beta2^t) here
    AdamCoefficients row_c = c;
    if (lazy) row_c.eps = static_cast<float>(eps * c.inv_bias2_sqrt);
    const auto adam_row = [&](int64_t row, bool full) {
      each_table(row, [&](int64_t o, int64_t dim) {
        if (full) {
          adam_full(P + o, G + o, M + o, S + o, dim, row_c);
        } else {
          adam_decay(P + o, M + o, S + o, dim, row_c);
        }
      });
      touched[row] = 0;
    };
    if (lazy) {
      touched_rows.clear();
      for (int64_t k = 0; k < n; ++k) {
        for (const int64_t row : {bu[k], bi[k]}) {
          if (touched[row] == 1) {
            touched[row] = 2;  // listed
            touched_rows.push_back(row);
          }
        }
      }
      const int64_t count = static_cast<int64_t>(touched_rows.size());
      at::parallel_for(0, count, 64, [&](int64_t begin, int64_t end) {
        TORCHCF_FLUSH_DENORMALS();
        for (int64_t r = begin; r < end; ++r) {
          if (r + 2 < end) {  // the next rows' moments: cache misses, fetched ahead
            each_table(touched_rows[r + 2], [&](int64_t o, int64_t) {
              __builtin_prefetch(M + o);
              __builtin_prefetch(S + o);
              __builtin_prefetch(P + o);
            });
          }
          adam_row(touched_rows[r], true);
        }
      });
    } else {
      at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
        TORCHCF_FLUSH_DENORMALS();  // moments of rarely seen rows decay into denormals
        for (int64_t row = begin; row < end; ++row) {
          adam_row(row, touched[row] || !decay_only_ok);
        }
      });
    }
    const int64_t dense = flat.numel() - dense_start;
    at::parallel_for(0, dense, 1 << 14, [&](int64_t begin, int64_t end) {
      const int64_t o = dense_start + begin;
      adam_full(P + o, G + o, M + o, S + o, end - begin, c);
    });
  }
  scatter_logits(logits, order, sz);
  steps.fill_(step);
  return loss_sum;
}
