// iALS: conjugate-gradient steps on every row's normal equations at once, rows in parallel
// (Rendle et al. 2022's objective, the solver implicit uses). For row u with observed columns
// I_u of the fixed factors H: A_u x = G x + λ_u x + Σ_{i∈I_u} h_i (h_iᵀ x), G = α₀ HᵀH, and the
// right-hand side is Σ_{i∈I_u} h_i. A is applied without being formed: a step costs
// O(|I_u|·d + d²), each row's vectors stay in cache. Warm-started from the current row.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

// D > 0: the factor count known at compile time (the loops unroll and vectorise fully);
// D == 0: any count, ``d`` at run time.
template <int64_t D>
struct Width {
  int64_t d;
  inline int64_t operator()() const { return D > 0 ? D : d; }
};

inline float ials_dot(const float* a, const float* b, int64_t d) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < d; ++j) s += a[j] * b[j];
  return s;
}

// out = G v + lam v + Σ_{k∈[lo,hi)} h_{idx[k]} (h_{idx[k]} · v)
template <int64_t D>
inline void ials_apply(const float* G, const float* H, const int64_t* idx, int64_t lo, int64_t hi,
                       Width<D> width, float lam, const float* v, float* out) {
  const int64_t d = width();
  for (int64_t a = 0; a < d; ++a) out[a] = ials_dot(G + a * d, v, d) + lam * v[a];
  for (int64_t k = lo; k < hi; ++k) {
    const float* h = H + idx[k] * d;
    const float dot = ials_dot(h, v, d);
#pragma omp simd
    for (int64_t b = 0; b < d; ++b) out[b] += dot * h[b];
  }
}

// r = b − A x, b = Σ h (the right-hand side summed first, then A x taken from it)
template <int64_t D>
inline void ials_residual(const float* G, const float* H, const int64_t* idx, int64_t lo,
                          int64_t hi, Width<D> width, float lam, const float* x, float* ax,
                          float* r) {
  const int64_t d = width();
  std::fill(r, r + d, 0.f);
  for (int64_t k = lo; k < hi; ++k) {
    const float* h = H + idx[k] * d;
#pragma omp simd
    for (int64_t b = 0; b < d; ++b) r[b] += h[b];
  }
  ials_apply(G, H, idx, lo, hi, width, lam, x, ax);
#pragma omp simd
  for (int64_t b = 0; b < d; ++b) r[b] -= ax[b];
}

template <int64_t D>
void ials_rows(float* X, const float* H, const float* G, const int64_t* P, const int64_t* I,
               const float* R, int64_t n, int64_t d_runtime, int64_t steps) {
  const Width<D> width{d_runtime};
  const int64_t d = width();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> r(d), p(d), ap(d);
    for (int64_t u = begin; u < end; ++u) {
      float* x = X + u * d;
      const int64_t lo = P[u], hi = P[u + 1];
      const float lam = R[u];
      ials_residual(G, H, I, lo, hi, width, lam, x, ap.data(), r.data());
      std::copy(r.begin(), r.end(), p.begin());
      float rs = ials_dot(r.data(), r.data(), d);
      for (int64_t s = 0; s < steps; ++s) {
        ials_apply(G, H, I, lo, hi, width, lam, p.data(), ap.data());
        const float step = rs / std::max(ials_dot(p.data(), ap.data(), d), 1e-30f);
#pragma omp simd
        for (int64_t b = 0; b < d; ++b) {
          x[b] += step * p[b];
          r[b] -= step * ap[b];
        }
        const float fresh = ials_dot(r.data(), r.data(), d);
        const float beta = fresh / std::max(rs, 1e-30f);
#pragma omp simd
        for (int64_t b = 0; b < d; ++b) p[b] = r[b] + beta * p[b];
        rs = fresh;
      }
    }
  });
}

}  // namespace

// target (n, d) float32, updated in place; fixed (m, d) float32; gram (d, d) float32;
// indptr (n + 1) int64 and indices (nnz) int64: the rows' observed columns (CSR);
// reg (n) float32: each row's λ_u; steps: conjugate-gradient steps per row.
void ials_cg(torch::Tensor target, torch::Tensor fixed, torch::Tensor gram, torch::Tensor indptr,
             torch::Tensor indices, torch::Tensor reg, int64_t steps) {
  TORCH_CHECK(target.dim() == 2 && fixed.dim() == 2 && target.size(1) == fixed.size(1),
              "ials_cg: target and fixed must be (n, d) and (m, d)");
  TORCH_CHECK(target.is_contiguous() && fixed.is_contiguous() && gram.is_contiguous(),
              "ials_cg: contiguous tensors expected");
  TORCH_CHECK(target.scalar_type() == torch::kFloat && fixed.scalar_type() == torch::kFloat &&
                  gram.scalar_type() == torch::kFloat && reg.scalar_type() == torch::kFloat,
              "ials_cg: float32 tensors expected");
  TORCH_CHECK(indptr.scalar_type() == torch::kLong && indices.scalar_type() == torch::kLong,
              "ials_cg: int64 indptr and indices expected");
  const int64_t n = target.size(0), d = target.size(1), m = fixed.size(0);
  TORCH_CHECK(indptr.numel() == n + 1 && reg.numel() == n, "ials_cg: indptr/reg sizes");
  TORCH_CHECK(gram.size(0) == d && gram.size(1) == d, "ials_cg: gram must be (d, d)");
  float* X = target.data_ptr<float>();
  const float* H = fixed.data_ptr<float>();
  const float* G = gram.data_ptr<float>();
  const int64_t* P = indptr.data_ptr<int64_t>();
  const int64_t* I = indices.data_ptr<int64_t>();
  const float* R = reg.data_ptr<float>();
  if (n > 0) TORCH_CHECK(P[0] == 0 && P[n] == indices.numel(), "ials_cg: indptr bounds");
  for (int64_t k = 0; k < indices.numel(); ++k)
    TORCH_CHECK(I[k] >= 0 && I[k] < m, "ials_cg: column index out of range");
  switch (d) {
    case 32: ials_rows<32>(X, H, G, P, I, R, n, d, steps); break;
    case 64: ials_rows<64>(X, H, G, P, I, R, n, d, steps); break;
    case 128: ials_rows<128>(X, H, G, P, I, R, n, d, steps); break;
    default: ials_rows<0>(X, H, G, P, I, R, n, d, steps);
  }
}
