// Per-bin sums of many units at once for rate maps (analysis/binning.py):
//
//   totals[k, u] = sum over samples s with bin[s] = k of activity[s, u]
//
// activity [S, U] (float or double; rows may be strided, units contiguous) is read once,
// row by row in sample order. Threads split the samples into chunks of ``chunk``; each
// sums a chunk into its own accumulator [n_bins, U] in the activity's dtype, adds it into
// its own float64 partial totals, and the partials are summed at the end. Bins must lie
// in [0, n_bins) (checked by the caller).
#include <torch/extension.h>

#include <algorithm>
#include <vector>

namespace {

template <typename scalar_t>
void binned_sums_of(const int64_t* bins, const scalar_t* activity, int64_t samples,
                    int64_t row, int64_t units, int64_t n_bins, int64_t chunk, double* totals) {
  const int threads = at::get_num_threads();
  std::vector<double> parts(static_cast<size_t>(threads) * n_bins * units, 0.0);
  const int64_t chunks = (samples + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    double* part = parts.data() + static_cast<size_t>(at::get_thread_num()) * n_bins * units;
    std::vector<scalar_t> sums(n_bins * units);
    for (int64_t c = first; c < last; ++c) {
      std::fill(sums.begin(), sums.end(), scalar_t(0));
      for (int64_t s = c * chunk; s < std::min(samples, (c + 1) * chunk); ++s) {
        const scalar_t* values = activity + s * row;
        scalar_t* into = &sums[bins[s] * units];
#pragma omp simd
        for (int64_t j = 0; j < units; ++j) into[j] += values[j];
      }
#pragma omp simd
      for (int64_t i = 0; i < n_bins * units; ++i) part[i] += sums[i];
    }
  });
  for (int t = 0; t < threads; ++t)
    for (int64_t i = 0; i < n_bins * units; ++i) totals[i] += parts[t * n_bins * units + i];
}

}  // namespace

// bins [S] int64, activity [S, U] float32 or float64 with unit stride 1 -> totals [n_bins, U]
// float64.
torch::Tensor binned_sums(torch::Tensor bins, torch::Tensor activity, int64_t n_bins,
                          int64_t chunk) {
  TORCH_CHECK(bins.is_contiguous() && bins.scalar_type() == torch::kLong, "bins: contiguous int64");
  TORCH_CHECK(activity.dim() == 2 && activity.stride(1) == 1, "activity: [S, U], units contiguous");
  const int64_t samples = activity.size(0), units = activity.size(1);
  auto totals = torch::zeros({n_bins, units}, activity.options().dtype(torch::kDouble));
  AT_DISPATCH_FLOATING_TYPES(activity.scalar_type(), "binned_sums", [&] {
    binned_sums_of<scalar_t>(bins.data_ptr<int64_t>(), activity.data_ptr<scalar_t>(), samples,
                             activity.stride(0), units, n_bins, chunk,
                             totals.data_ptr<double>());
  });
  return totals;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("binned_sums", &binned_sums, "per-bin sums of every unit (CPU)");
}
