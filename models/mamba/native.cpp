// The selective scan of models/mamba/scan.py as a C++ loop for CPUs:
//
//   h_t = a_t * h_{t-1} + dt_t x_t B_t,  y_t = C_t . h_t + D x_t,
//   a_t = exp(dt_t A) ("positive") or 2 exp(dt_t A) - 1 ("signed").
//
// Work is split into tasks of one batch element and W = 16 channels; the channels are the
// vector lanes, so every operation is elementwise across lanes (the sum over the state
// axis in y_t is a sum of N vectors, not a reduction within one) and the state of a task,
// [N, W], stays in the L1 cache. The backward pass recomputes states segment by segment
// from checkpoints saved every K steps and accumulates every gradient in the same pass.
//
// Layouts (contiguous float32, E a multiple of W): x, dt, y [b, L, E]; B, C [b, L, N];
// A_t [N, E] (A transposed); D [E]; states [b, L, E, N]; checkpoints [b, ceil(L / K), N, E].
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t W = 16;        // channels per task: the vector lanes
constexpr int64_t SEGMENT = 16;  // K: time steps recomputed at once in the backward pass

struct Shape {
  int64_t batch, length, d_inner, n_state, segments;
};

// exp(v) for v in [-87, 88] (clamped outside), inlined so that loops over lanes
// vectorise without a call: v = k ln 2 + r with |r| <= ln 2 / 2 (ln 2 split in two
// constants so k ln 2 is exact), exp(r) by Cephes' degree-6 polynomial, 2^k from the
// exponent bits. Relative error below 3e-7 (tested against torch.exp).
inline float exp_approx(float v) {
  v = std::min(std::max(v, -87.0f), 88.0f);
  const float k = std::floor(v * 1.44269504088896341f + 0.5f);
  const float r = (v - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// a = exp(dt A) or 2 exp(dt A) - 1 for one state n and W lanes, and da/d(dt A).
inline void transition(const float* dt, const float* A, bool is_signed, float* a,
                       float* slope) {
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) {
    const float decay = exp_approx(dt[j] * A[j]);
    a[j] = is_signed ? 2.0f * decay - 1.0f : decay;
    slope[j] = is_signed ? 2.0f * decay : decay;
  }
}

}  // namespace

std::vector<torch::Tensor> scan_forward(torch::Tensor x, torch::Tensor dt, torch::Tensor A_t,
                                        torch::Tensor B, torch::Tensor C, torch::Tensor D,
                                        bool is_signed, bool with_states) {
  const Shape s{x.size(0), x.size(1), x.size(2), A_t.size(0), (x.size(1) + SEGMENT - 1) / SEGMENT};
  auto y = torch::empty_like(x);
  auto checkpoints = torch::empty({s.batch, s.segments, s.n_state, s.d_inner}, x.options());
  auto states = torch::empty({with_states ? s.batch : 0, s.length, s.d_inner, s.n_state},
                             x.options());
  const float *px = x.data_ptr<float>(), *pdt = dt.data_ptr<float>();
  const float *pA = A_t.data_ptr<float>(), *pB = B.data_ptr<float>(), *pC = C.data_ptr<float>();
  const float* pD = D.data_ptr<float>();
  float *py = y.data_ptr<float>(), *pck = checkpoints.data_ptr<float>();
  float* pstates = with_states ? states.data_ptr<float>() : nullptr;
  const int64_t blocks = s.d_inner / W;

  at::parallel_for(0, s.batch * blocks, 1, [=](int64_t first, int64_t last) {
    std::vector<float> h(s.n_state * W);
    alignas(64) float a[W], slope[W], drive[W], out[W];
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / blocks, e0 = (task % blocks) * W;
      std::fill(h.begin(), h.end(), 0.0f);
      for (int64_t t = 0; t < s.length; ++t) {
        const int64_t bt = b * s.length + t;
        if (t % SEGMENT == 0) {
          float* ck = pck + (b * s.segments + t / SEGMENT) * s.n_state * s.d_inner + e0;
          for (int64_t n = 0; n < s.n_state; ++n)
            std::copy(&h[n * W], &h[n * W] + W, ck + n * s.d_inner);
        }
        const float *xt = px + bt * s.d_inner + e0, *dtt = pdt + bt * s.d_inner + e0;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
          drive[j] = dtt[j] * xt[j];
          out[j] = pD[e0 + j] * xt[j];
        }
        for (int64_t n = 0; n < s.n_state; ++n) {
          const float Bn = pB[bt * s.n_state + n], Cn = pC[bt * s.n_state + n];
          float* hn = &h[n * W];
          transition(dtt, pA + n * s.d_inner + e0, is_signed, a, slope);
#pragma omp simd
          for (int64_t j = 0; j < W; ++j) {
            hn[j] = a[j] * hn[j] + drive[j] * Bn;
            out[j] += hn[j] * Cn;
          }
          if (pstates) {
            float* st = pstates + (bt * s.d_inner + e0) * s.n_state + n;
            for (int64_t j = 0; j < W; ++j) st[j * s.n_state] = hn[j];
          }
        }
        std::copy(out, out + W, py + bt * s.d_inner + e0);
      }
    }
  });
  return {y, checkpoints, states};
}

// grad_y [b, L, E] and grad_states [b, L, E, N] may be empty (no gradient from them).
// Returns grad_x, grad_dt [b, L, E], grad_A_t [N, E], grad_B, grad_C [b, L, N], grad_D [E].
std::vector<torch::Tensor> scan_backward(torch::Tensor x, torch::Tensor dt, torch::Tensor A_t,
                                         torch::Tensor B, torch::Tensor C, torch::Tensor D,
                                         torch::Tensor checkpoints, torch::Tensor grad_y,
                                         torch::Tensor grad_states, bool is_signed) {
  const Shape s{x.size(0), x.size(1), x.size(2), A_t.size(0), checkpoints.size(1)};
  const int threads = at::get_num_threads();
  auto grad_x = torch::empty_like(x), grad_dt = torch::empty_like(dt);
  auto grad_B = torch::empty_like(B), grad_C = torch::empty_like(C);
  auto grad_A_parts = torch::zeros({threads, s.n_state, s.d_inner}, x.options());  // per thread
  auto grad_D_parts = torch::zeros({threads, s.d_inner}, x.options());
  const bool has_gy = grad_y.numel() > 0, has_gs = grad_states.numel() > 0;
  const float *px = x.data_ptr<float>(), *pdt = dt.data_ptr<float>();
  const float *pA = A_t.data_ptr<float>(), *pB = B.data_ptr<float>(), *pC = C.data_ptr<float>();
  const float *pD = D.data_ptr<float>(), *pck = checkpoints.data_ptr<float>();
  const float* pgy = has_gy ? grad_y.data_ptr<float>() : nullptr;
  const float* pgs = has_gs ? grad_states.data_ptr<float>() : nullptr;
  float *pgx = grad_x.data_ptr<float>(), *pgdt = grad_dt.data_ptr<float>();
  float *pgB = grad_B.data_ptr<float>(), *pgC = grad_C.data_ptr<float>();
  const int64_t blocks = s.d_inner / W, nw = s.n_state * W;

  // one batch element per thread at a time, segments backwards, and in each segment every
  // channel block in turn (each carrying its own g): grad_B and grad_C (sums over channels)
  // are summed lane-wise over the blocks in a segment-sized buffer, then over lanes
  at::parallel_for(0, s.batch, 1, [=](int64_t first, int64_t last) {
    float* gA = grad_A_parts.data_ptr<float>() + at::get_thread_num() * s.n_state * s.d_inner;
    float* gD = grad_D_parts.data_ptr<float>() + at::get_thread_num() * s.d_inner;
    // one segment: states (the one before it, then K), transitions and slopes, [k][n][W]
    std::vector<float> hs((SEGMENT + 1) * nw), as(SEGMENT * nw), g_blocks(blocks * nw);
    std::vector<float> slopes(is_signed ? SEGMENT * nw : 0);  // positive: the slope is a
    std::vector<float> lanes_B(SEGMENT * nw), lanes_C(SEGMENT * nw);  // [k][n][W]
    alignas(64) float drive[W], gy[W], grad_drive[W], grad_dtA[W];
    for (int64_t b = first; b < last; ++b) {
      std::fill(g_blocks.begin(), g_blocks.end(), 0.0f);
      for (int64_t seg = s.segments - 1; seg >= 0; --seg) {
        const int64_t t0 = seg * SEGMENT, t1 = std::min(s.length, t0 + SEGMENT);
        std::fill(lanes_B.begin(), lanes_B.end(), 0.0f);
        std::fill(lanes_C.begin(), lanes_C.end(), 0.0f);
        for (int64_t block = 0; block < blocks; ++block) {
          const int64_t e0 = block * W;
          float* g = &g_blocks[block * nw];  // dL/dh of this block, carried across segments
          const float* ck = pck + (b * s.segments + seg) * s.n_state * s.d_inner + e0;
          for (int64_t n = 0; n < s.n_state; ++n)
            std::copy(ck + n * s.d_inner, ck + n * s.d_inner + W, &hs[n * W]);
          for (int64_t t = t0; t < t1; ++t) {  // recompute the segment's states
            const int64_t k = t - t0, bt = b * s.length + t;
            const float *xt = px + bt * s.d_inner + e0, *dtt = pdt + bt * s.d_inner + e0;
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) drive[j] = dtt[j] * xt[j];
            for (int64_t n = 0; n < s.n_state; ++n) {
              const float Bn = pB[bt * s.n_state + n];
              float *a = &as[k * nw + n * W], *h = &hs[(k + 1) * nw + n * W];
              const float* h_prev = &hs[k * nw + n * W];
              float* slope = is_signed ? &slopes[k * nw + n * W] : a;
              transition(dtt, pA + n * s.d_inner + e0, is_signed, a, slope);
#pragma omp simd
              for (int64_t j = 0; j < W; ++j) h[j] = a[j] * h_prev[j] + drive[j] * Bn;
            }
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {  // g = dL/dh_t, then a_t g
            const int64_t k = t - t0, bt = b * s.length + t;
            const float *xt = px + bt * s.d_inner + e0, *dtt = pdt + bt * s.d_inner + e0;
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) {
              drive[j] = dtt[j] * xt[j];
              gy[j] = has_gy ? pgy[bt * s.d_inner + e0 + j] : 0.0f;
              grad_drive[j] = 0.0f;
              grad_dtA[j] = 0.0f;
            }
            for (int64_t n = 0; n < s.n_state; ++n) {
              const float Bn = pB[bt * s.n_state + n], Cn = pC[bt * s.n_state + n];
              const float* An = pA + n * s.d_inner + e0;
              const float *h = &hs[(k + 1) * nw + n * W], *h_prev = &hs[k * nw + n * W];
              const float* a = &as[k * nw + n * W];
              const float* slope = is_signed ? &slopes[k * nw + n * W] : a;
              float *gn = &g[n * W], *gAn = gA + n * s.d_inner + e0;
              float *sum_B = &lanes_B[k * nw + n * W], *sum_C = &lanes_C[k * nw + n * W];
              if (has_gs) {  // dL/dh_t from the trajectory: g += grad_states[b, t, :, n]
                const float* gs = pgs + (bt * s.d_inner + e0) * s.n_state + n;
                for (int64_t j = 0; j < W; ++j) gn[j] += gs[j * s.n_state];
              }
#pragma omp simd
              for (int64_t j = 0; j < W; ++j) {
                const float g_t = gn[j] + Cn * gy[j];
                sum_C[j] += h[j] * gy[j];
                sum_B[j] += g_t * drive[j];
                grad_drive[j] += g_t * Bn;
                const float grad_decay = g_t * h_prev[j] * slope[j];  // dL/d(dt A)
                grad_dtA[j] += grad_decay * An[j];
                gAn[j] += grad_decay * dtt[j];
                gn[j] = a[j] * g_t;
              }
            }
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) {
              pgx[bt * s.d_inner + e0 + j] = grad_drive[j] * dtt[j] + gy[j] * pD[e0 + j];
              gD[e0 + j] += gy[j] * xt[j];
              pgdt[bt * s.d_inner + e0 + j] = grad_dtA[j] + grad_drive[j] * xt[j];
            }
          }
        }
        for (int64_t i = 0; i < (t1 - t0) * s.n_state; ++i) {  // sum over lanes: [k][n]
          float sum_B = 0.0f, sum_C = 0.0f;
#pragma omp simd reduction(+ : sum_B, sum_C)
          for (int64_t j = 0; j < W; ++j) {
            sum_B += lanes_B[i * W + j];
            sum_C += lanes_C[i * W + j];
          }
          pgB[(b * s.length + t0) * s.n_state + i] = sum_B;
          pgC[(b * s.length + t0) * s.n_state + i] = sum_C;
        }
      }
    }
  });
  return {grad_x, grad_dt, grad_A_parts.sum(0), grad_B, grad_C, grad_D_parts.sum(0)};
}

// The mixer's causal depthwise convolution and SiLU, in the [b, L, E] layout of the scan:
//   pre[b, t, e] = bias[e] + sum_k w_t[k, e] x[b, t - (K - 1) + k, e],  out = silu(pre).
// x may be a view whose rows are ``x_row`` floats apart (the x half of in_proj's output);
// w_t [K, E] is the Conv1d weight transposed; bias [E] or empty.
namespace {

inline float sigmoid(float v) { return 1.0f / (1.0f + exp_approx(-v)); }

// pre-activations of one task (batch b, channels e0 .. e0 + lanes) at time t into pre[W]
inline void conv_taps(const float* x, int64_t x_row, const float* w_t, const float* bias,
                      int64_t width, int64_t d_inner, int64_t t, int64_t lanes, float* pre) {
  for (int64_t j = 0; j < lanes; ++j) pre[j] = bias ? bias[j] : 0.0f;
  for (int64_t k = std::max<int64_t>(0, width - 1 - t); k < width; ++k) {
    const float *xs = x + (t - (width - 1) + k) * x_row, *wk = w_t + k * d_inner;
#pragma omp simd
    for (int64_t j = 0; j < lanes; ++j) pre[j] += wk[j] * xs[j];
  }
}

}  // namespace

torch::Tensor conv_forward(torch::Tensor x, torch::Tensor w_t, torch::Tensor bias) {
  const int64_t batch = x.size(0), length = x.size(1), d_inner = x.size(2);
  const int64_t width = w_t.size(0), x_row = x.stride(1), blocks = (d_inner + W - 1) / W;
  auto out = torch::empty({batch, length, d_inner}, x.options());
  const float *px = x.data_ptr<float>(), *pw = w_t.data_ptr<float>();
  const float* pbias = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* pout = out.data_ptr<float>();
  at::parallel_for(0, batch * blocks, 1, [=](int64_t first, int64_t last) {
    alignas(64) float pre[W];
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / blocks, e0 = (task % blocks) * W, lanes = std::min(W, d_inner - e0);
      for (int64_t t = 0; t < length; ++t) {
        conv_taps(px + b * x.stride(0) + e0, x_row, pw + e0, pbias ? pbias + e0 : nullptr,
                  width, d_inner, t, lanes, pre);
        float* o = pout + (b * length + t) * d_inner + e0;
#pragma omp simd
        for (int64_t j = 0; j < lanes; ++j) o[j] = pre[j] * sigmoid(pre[j]);
      }
    }
  });
  return out;
}

// grad_out [b, L, E] contiguous; returns grad_x [b, L, E], grad_w_t [K, E], grad_bias [E].
std::vector<torch::Tensor> conv_backward(torch::Tensor x, torch::Tensor w_t, torch::Tensor bias,
                                         torch::Tensor grad_out) {
  const int64_t batch = x.size(0), length = x.size(1), d_inner = x.size(2);
  const int64_t width = w_t.size(0), x_row = x.stride(1), blocks = (d_inner + W - 1) / W;
  const int threads = at::get_num_threads();
  auto grad_x = torch::empty({batch, length, d_inner}, x.options());
  auto grad_w_parts = torch::zeros({threads, width, d_inner}, x.options());
  auto grad_bias_parts = torch::zeros({threads, d_inner}, x.options());
  const float *px = x.data_ptr<float>(), *pw = w_t.data_ptr<float>();
  const float* pbias = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const float* pgo = grad_out.data_ptr<float>();
  float* pgx = grad_x.data_ptr<float>();
  at::parallel_for(0, batch * blocks, 1, [=](int64_t first, int64_t last) {
    const int64_t thread = at::get_thread_num();
    float* gw = grad_w_parts.data_ptr<float>() + thread * width * d_inner;
    float* gbias = grad_bias_parts.data_ptr<float>() + thread * d_inner;
    std::vector<float> grad_pre(length * W);  // dL/dpre of one task, [L][W]
    alignas(64) float pre[W];
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / blocks, e0 = (task % blocks) * W, lanes = std::min(W, d_inner - e0);
      const float* xb = px + b * x.stride(0) + e0;
      for (int64_t t = 0; t < length; ++t) {
        conv_taps(xb, x_row, pw + e0, pbias ? pbias + e0 : nullptr, width, d_inner, t, lanes,
                  pre);
        const float* go = pgo + (b * length + t) * d_inner + e0;
        float* gp = &grad_pre[t * W];
#pragma omp simd
        for (int64_t j = 0; j < lanes; ++j) {
          const float sig = sigmoid(pre[j]);
          gp[j] = go[j] * sig * (1.0f + pre[j] * (1.0f - sig));
          gbias[e0 + j] += gp[j];
        }
        for (int64_t k = std::max<int64_t>(0, width - 1 - t); k < width; ++k) {
          const float* xs = xb + (t - (width - 1) + k) * x_row;
          float* gwk = gw + k * d_inner + e0;
#pragma omp simd
          for (int64_t j = 0; j < lanes; ++j) gwk[j] += gp[j] * xs[j];
        }
      }
      for (int64_t t = 0; t < length; ++t) {  // grad_x[t] = sum_k w[k] grad_pre[t + K-1-k]
        float* gx = pgx + (b * length + t) * d_inner + e0;
        for (int64_t j = 0; j < lanes; ++j) gx[j] = 0.0f;
        for (int64_t k = 0; k < width; ++k) {
          const int64_t source = t + width - 1 - k;
          if (source >= length) continue;
          const float *wk = pw + k * d_inner + e0, *gp = &grad_pre[source * W];
#pragma omp simd
          for (int64_t j = 0; j < lanes; ++j) gx[j] += wk[j] * gp[j];
        }
      }
    }
  });
  return {grad_x, grad_w_parts.sum(0), grad_bias_parts.sum(0)};
}

// exp_approx elementwise, for its test
torch::Tensor exp_elementwise(torch::Tensor v) {
  auto out = torch::empty_like(v);
  const float* pv = v.data_ptr<float>();
  float* po = out.data_ptr<float>();
  for (int64_t i = 0; i < v.numel(); ++i) po[i] = exp_approx(pv[i]);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("exp", &exp_elementwise, "the kernels' exp, elementwise (contiguous float32)");
  m.def("scan_forward", &scan_forward, "selective scan forward (CPU, float32)");
  m.def("scan_backward", &scan_backward, "selective scan backward (CPU, float32)");
  m.def("conv_forward", &conv_forward, "causal depthwise conv + SiLU forward (CPU, float32)");
  m.def("conv_backward", &conv_backward, "causal depthwise conv + SiLU backward");
  m.attr("lanes") = W;
}
