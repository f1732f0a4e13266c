// Batch-all and semi-hard mining in one pass per anchor: the "native" engine of
// tripletlab/losses/engines.py, compiled on first use by tripletlab/losses/native.py.
//
// Same integers as the TensorFlow "buckets" engine there, from the distances, without
// gradient (the loss and its gradient stay TensorFlow ops). Per row a of d [R, N], whose
// anchor is column own[a] and whose positives are the columns pos_cols[a, :n_pos[a]]:
//
//   1. gather and sort the positives' values (K of them), O(K log K);
//   2. bucket every column among them: how many sorted values lie below it. A count over
//      every 16th value (vectorised over the columns), then a four-step search inside one
//      block of 16 (AVX-512 gathers where the CPU has them); O(N (K / 16 + 4));
//   3. in the same pass, batch-all: -r(a, n) = bucket - K for every column and a histogram
//      of the buckets; then the positives' and the anchor's own entries are taken out, and
//      a cumulative sum gives each positive's count c(a, p). Semi-hard: the nearest
//      negative per bucket; then a suffix scan gives each positive the first non-empty
//      bucket above it.
//
// Ties follow the definitions, as in the TensorFlow engines: a negative exactly at a
// threshold d_ap + m has h = 0 (not counted); one exactly at d_ap is not "farther"; among
// equal distances the lowest column wins. A NaN distance is never below a threshold nor
// picked; a NaN positive sorts as +inf, so the sort stays well defined (the loss is NaN
// then anyway: strategies.nan_unless_finite).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 16;

template <typename T, bool kInclusive>
inline bool Below(T threshold, T x) {  // the threshold counts for x
  return kInclusive ? threshold <= x : threshold < x;
}

// bucket[j] = #{k : sorted[k] < x_j} (strict) or <= x_j (inclusive), for j < n.
// `sorted`: k_count values ascending, then at least 16 +inf.
template <typename T, bool kInclusive>
void Buckets(const T* sorted, int64_t k_count, const T* x, int64_t n, int32_t* bucket) {
  // coarse: the number of whole blocks of 16 below x (their last value counts)
  std::fill(bucket, bucket + n, 0);
  for (int64_t b = 0; b < k_count / kBlock; ++b) {
    const T t = sorted[b * kBlock + kBlock - 1];
    for (int64_t j = 0; j < n; ++j) bucket[j] += static_cast<int32_t>(Below<T, kInclusive>(t, x[j]));
  }
  // fine: a four-step search in the block the coarse count points at. Its last value does
  // not count, except +inf padding for x = +inf (inclusive): hence the min with k_count.
  int64_t j = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    const __m512i limit = _mm512_set1_epi32(static_cast<int32_t>(k_count));
    constexpr int kPredicate = kInclusive ? _CMP_LE_OQ : _CMP_LT_OQ;
    for (; j + 16 <= n; j += 16) {
      const __m512 v = _mm512_loadu_ps(x + j);
      __m512i p = _mm512_slli_epi32(_mm512_loadu_si512(bucket + j), 4);
      for (int step = 8; step >= 1; step /= 2) {
        const __m512i probe = _mm512_add_epi32(p, _mm512_set1_epi32(step - 1));
        const __m512 t = _mm512_i32gather_ps(probe, sorted, 4);
        const __mmask16 below = _mm512_cmp_ps_mask(t, v, kPredicate);
        p = _mm512_mask_add_epi32(p, below, p, _mm512_set1_epi32(step));
      }
      _mm512_storeu_si512(bucket + j, _mm512_min_epi32(p, limit));
    }
  }
#endif
  for (; j < n; ++j) {
    const T* block = sorted + bucket[j] * kBlock;
    const T v = x[j];
    int32_t p = 0;
    p += Below<T, kInclusive>(block[p + 7], v) ? 8 : 0;
    p += Below<T, kInclusive>(block[p + 3], v) ? 4 : 0;
    p += Below<T, kInclusive>(block[p + 1], v) ? 2 : 0;
    p += Below<T, kInclusive>(block[p], v) ? 1 : 0;
    bucket[j] = std::min(static_cast<int32_t>(bucket[j] * kBlock + p),
                         static_cast<int32_t>(k_count));
  }
}

// Sorts values and columns together, by value then column. float32 packs both in one
// uint64 (the IEEE bits made order-preserving: all bits of a negative value flipped, the
// sign bit of a positive one), which sorts ~2x faster than pairs.
inline uint64_t PackedKey(float value, int32_t column) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits ^= (bits >> 31) ? 0xFFFFFFFFu : 0x80000000u;
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(column);
}

inline void SortTogether(float* values, int32_t* columns, int64_t n, std::vector<uint64_t>& keys) {
  keys.resize(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = PackedKey(values[i], columns[i]);
  std::sort(keys.begin(), keys.end());
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits = static_cast<uint32_t>(keys[i] >> 32);
    bits ^= (bits >> 31) ? 0x80000000u : 0xFFFFFFFFu;
    std::memcpy(&values[i], &bits, sizeof bits);
    columns[i] = static_cast<int32_t>(keys[i] & 0xFFFFFFFFu);
  }
}

inline void SortTogether(double* values, int32_t* columns, int64_t n,
                         std::vector<std::pair<double, int32_t>>& pairs) {
  pairs.resize(n);
  for (int64_t i = 0; i < n; ++i) pairs[i] = {values[i], columns[i]};
  std::sort(pairs.begin(), pairs.end());
  for (int64_t i = 0; i < n; ++i) {
    values[i] = pairs[i].first;
    columns[i] = pairs[i].second;
  }
}

template <typename T>
using SortScratch =
    typename std::conditional<std::is_same<T, float>::value, std::vector<uint64_t>,
                              std::vector<std::pair<double, int32_t>>>::type;

// One anchor's positives, values (d + shift; NaN as +inf) ascending then by column, +inf
// after them for Buckets' blocks; and a bucket per column. Buffers grow, never shrink.
template <typename T>
struct Row {
  std::vector<T> pos;
  std::vector<int32_t> pos_col, bucket;
  int64_t k = 0;
  SortScratch<T> scratch;

  void Positives(const T* d, const int32_t* cols, int64_t k_row, int64_t n, T shift) {
    k = k_row;
    if (static_cast<int64_t>(pos.size()) < k + 2 * kBlock) {
      pos.resize(k + 2 * kBlock);
      pos_col.resize(k + 2 * kBlock);
    }
    if (static_cast<int64_t>(bucket.size()) < n) bucket.resize(n);
    const T inf = std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < k; ++i) {
      const T x = d[cols[i]];
      pos[i] = (x == x ? x : inf) + shift;
      pos_col[i] = cols[i];
    }
    SortTogether(pos.data(), pos_col.data(), k, scratch);
    std::fill(pos.begin() + k, pos.begin() + k + 2 * kBlock, inf);
  }
};

// Batch-all, one row: w_row [N] = c(a, p) at positives, -r(a, n) at negatives, 0 at own;
// returns the sum of c.
template <typename T>
int64_t BatchAllRow(Row<T>& row, const T* d, const int32_t* cols, int64_t k, int64_t n,
                    int32_t own, T margin, T* w_row, std::vector<int32_t>& below) {
  row.Positives(d, cols, k, n, margin);
  // bucket = #{thresholds <= d}: for a negative, the thresholds above it (K - bucket) are
  // r(a, n). Every column is bucketed and counted; the positives and own are taken out.
  int32_t* bucket = row.bucket.data();
  Buckets<T, true>(row.pos.data(), k, d, n, bucket);
  below.assign(4 * (k + 1), 0);  // four histograms: no store-to-load chain on one count
  for (int64_t j = 0; j < n; ++j) {
    w_row[j] = static_cast<T>(bucket[j] - k);
    ++below[(j & 3) * (k + 1) + bucket[j]];
  }
  for (int64_t i = 0; i <= k; ++i) {
    below[i] += below[(k + 1) + i] + below[2 * (k + 1) + i] + below[3 * (k + 1) + i];
  }
  for (int64_t i = 0; i < k; ++i) --below[bucket[row.pos_col[i]]];
  --below[bucket[own]];
  std::partial_sum(below.begin(), below.begin() + k + 1, below.begin());
  // c for a threshold t = #{n : d_an < t} = #{n : bucket <= first index of t}
  int64_t total = 0, first = 0;
  for (int64_t i = 0; i < k; ++i) {
    if (i == 0 || row.pos[i] != row.pos[i - 1]) first = i;
    w_row[row.pos_col[i]] = static_cast<T>(below[first]);
    total += below[first];
  }
  w_row[own] = T(0);
  return total;
}

// Semi-hard, one row: for its positives, nearest first, their columns (cols_out) and the
// negative each is compared with (picks_out): the nearest negative strictly farther than
// d_ap (lowest column among equals), else the farthest negative (lowest column among
// equals; column 0 without negatives). Slots k .. width - 1: the anchor's own column.
template <typename T>
void SemiHardRow(Row<T>& row, const T* d, const int32_t* cols, int64_t k, int64_t n,
                 int32_t own, int64_t width, int32_t* cols_out, int32_t* picks_out,
                 std::vector<T>& best, std::vector<int32_t>& best_col) {
  row.Positives(d, cols, k, n, T(0));
  int32_t* bucket = row.bucket.data();
  // bucket = #{p : d_ap < d}: a negative is farther than exactly those positives
  Buckets<T, false>(row.pos.data(), k, d, n, bucket);
  const int32_t skip = static_cast<int32_t>(k + 1);  // the positives' and own's bucket
  for (int64_t i = 0; i < k; ++i) bucket[row.pos_col[i]] = skip;
  bucket[own] = skip;
  const T inf = std::numeric_limits<T>::infinity();
  best.assign(k + 2, inf);  // per bucket: its nearest negative (+inf, -1: none yet)
  best_col.assign(k + 2, -1);
  for (int64_t j = 0; j < n; ++j) {  // column order: a strict comparison keeps the lowest
    // branch-free: which negative is nearest in a bucket is data, not a pattern a branch
    // predictor learns (the masks keep the compiler from bringing the branch back)
    const int32_t b = bucket[j];
    const T x = d[j];
    const T current = best[b];
    const int32_t take = -static_cast<int32_t>(x < current);  // all ones: x is nearer
    best[b] = x < current ? x : current;
    best_col[b] = (static_cast<int32_t>(j) & take) | (best_col[b] & ~take);
  }
  std::fill(cols_out, cols_out + width, own);
  std::fill(picks_out, picks_out + width, own);
  // the i-th nearest positive takes the first non-empty bucket above i
  const int64_t slots = std::min(k, width);
  int32_t next = -1;
  int64_t unanswered = slots;  // positives unanswered .. slots - 1: no farther negative
  for (int64_t i = slots - 1; i >= 0; --i) {
    if (best_col[i + 1] >= 0) next = best_col[i + 1];
    cols_out[i] = row.pos_col[i];
    picks_out[i] = next;
    if (next < 0) unanswered = i;
  }
  if (unanswered == slots) return;
  // The farthest positives have no farther negative: they take the farthest one (this pass
  // runs only for rows that have such positives: with trained embeddings, few)
  T far = -std::numeric_limits<T>::infinity();
  int32_t far_col = -1;
  for (int64_t j = 0; j < n; ++j) {
    const T x = d[j];
    if (bucket[j] != skip && x == x && (far_col < 0 || x > far)) {
      far = x;
      far_col = static_cast<int32_t>(j);
    }
  }
  for (int64_t i = unanswered; i < slots; ++i) picks_out[i] = far_col < 0 ? 0 : far_col;
}

}  // namespace

// The TensorFlow ops; without them (TRIPLETLAB_NO_TENSORFLOW) the functions above build on
// their own, for a C++ check or timing.
#ifndef TRIPLETLAB_NO_TENSORFLOW
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;

// Inputs 0-3 of both ops: d [R, N], pos_cols [R, W] int32 (row a's positives first, W at
// least the largest n_pos), n_pos [R] int32, own [R] int32. OK, or what is wrong.
tensorflow::Status Validate(OpKernelContext* context) {
  const Tensor& d = context->input(0);
  const Tensor& pos_cols = context->input(1);
  const Tensor& n_pos = context->input(2);
  const Tensor& own = context->input(3);
  if (d.dims() != 2) return InvalidArgument("d must be [R, N]");
  const int64_t rows = d.dim_size(0), n = d.dim_size(1);
  if (n >= std::numeric_limits<int32_t>::max()) return InvalidArgument("too many columns");
  if (pos_cols.dims() != 2 || pos_cols.dim_size(0) != rows) {
    return InvalidArgument("pos_cols must be [R, W]");
  }
  if (n_pos.dims() != 1 || n_pos.dim_size(0) != rows) return InvalidArgument("n_pos: [R]");
  if (own.dims() != 1 || own.dim_size(0) != rows) return InvalidArgument("own must be [R]");
  const int64_t width = pos_cols.dim_size(1);
  const auto cols = pos_cols.matrix<int32_t>();
  const auto count = n_pos.flat<int32_t>();
  const auto anchor = own.flat<int32_t>();
  std::vector<int64_t> seen(n, -1);  // the last row that named each column a positive
  for (int64_t a = 0; a < rows; ++a) {
    if (count(a) < 0 || count(a) > width || count(a) >= n) {
      return InvalidArgument("n_pos[", a, "] = ", count(a), " is out of range");
    }
    if (anchor(a) < 0 || anchor(a) >= n) {
      return InvalidArgument("own[", a, "] = ", anchor(a), " is not a column");
    }
    for (int64_t i = 0; i < count(a); ++i) {
      if (cols(a, i) < 0 || cols(a, i) >= n || cols(a, i) == anchor(a)) {
        return InvalidArgument("pos_cols[", a, ", ", i, "] = ", cols(a, i),
                               " is not a column other than own");
      }
      if (seen[cols(a, i)] == a) {
        return InvalidArgument("pos_cols[", a, "] names column ", cols(a, i), " twice");
      }
      seen[cols(a, i)] = a;
    }
  }
  return tensorflow::Status();
}

template <typename Work>
void ForRows(OpKernelContext* context, int64_t rows, int64_t n, Work work) {
  auto* threads = context->device()->tensorflow_cpu_worker_threads();
  const int64_t cost = 20 * n + 1000;  // per row, about ns: for the sharder
  tensorflow::Shard(threads->num_threads, threads->workers, rows, cost, work);
}

// (w [R, N] dtype of d, count [] int64): BatchAllRow for every row, hinge thresholds
// d_ap + margin (input 4).
template <typename T>
class BatchAllOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* context) override {
    OP_REQUIRES_OK(context, Validate(context));
    OP_REQUIRES(context, tensorflow::TensorShapeUtils::IsScalar(context->input(4).shape()),
                InvalidArgument("margin must be a scalar, not ",
                                context->input(4).shape().DebugString()));
    const Tensor& d_in = context->input(0);
    const T margin = context->input(4).scalar<T>()();
    Tensor* w_out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, d_in.shape(), &w_out));
    Tensor* count_out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({}), &count_out));
    const T* d = d_in.flat<T>().data();
    const int32_t* cols = context->input(1).flat<int32_t>().data();
    const int32_t* n_pos = context->input(2).flat<int32_t>().data();
    const int32_t* own = context->input(3).flat<int32_t>().data();
    T* w = w_out->flat<T>().data();
    std::vector<int64_t> row_count(d_in.dim_size(0), 0);
    const int64_t rows = d_in.dim_size(0), n = d_in.dim_size(1);
    const int64_t width = context->input(1).dim_size(1);
    ForRows(context, rows, n, [&](int64_t begin, int64_t end) {
      Row<T> row;
      std::vector<int32_t> below;
      for (int64_t a = begin; a < end; ++a) {
        row_count[a] = BatchAllRow(row, d + a * n, cols + a * width, n_pos[a], n, own[a],
                                   margin, w + a * n, below);
      }
    });
    count_out->scalar<int64_t>()() = std::accumulate(row_count.begin(), row_count.end(), 0LL);
  }
};

// (cols [R, W], picks [R, W]) int32: SemiHardRow for every row.
template <typename T>
class SemiHardOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* context) override {
    OP_REQUIRES_OK(context, Validate(context));
    const Tensor& d_in = context->input(0);
    const Tensor& pos_cols = context->input(1);
    Tensor* cols_out = nullptr;
    Tensor* picks_out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, pos_cols.shape(), &cols_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, pos_cols.shape(), &picks_out));
    const T* d = d_in.flat<T>().data();
    const int32_t* cols = context->input(1).flat<int32_t>().data();
    const int32_t* n_pos = context->input(2).flat<int32_t>().data();
    const int32_t* own = context->input(3).flat<int32_t>().data();
    int32_t* cols_o = cols_out->flat<int32_t>().data();
    int32_t* picks_o = picks_out->flat<int32_t>().data();
    const int64_t rows = d_in.dim_size(0), n = d_in.dim_size(1);
    const int64_t width = context->input(1).dim_size(1);
    ForRows(context, rows, n, [&](int64_t begin, int64_t end) {
      Row<T> row;
      std::vector<T> best;
      std::vector<int32_t> best_col;
      for (int64_t a = begin; a < end; ++a) {
        SemiHardRow(row, d + a * n, cols + a * width, n_pos[a], n, own[a], width,
                    cols_o + a * width, picks_o + a * width, best, best_col);
      }
    });
  }
};

}  // namespace

REGISTER_OP("TripletlabBatchAllCounts")
    .Input("d: T")
    .Input("pos_cols: int32")
    .Input("n_pos: int32")
    .Input("own: int32")
    .Input("margin: T")
    .Output("w: T")
    .Output("count: int64")
    .Attr("T: {float, double}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle margin;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 0, &margin));
      c->set_output(0, c->input(0));
      c->set_output(1, c->Scalar());
      return tensorflow::Status();
    });

REGISTER_OP("TripletlabSemiHardPicks")
    .Input("d: T")
    .Input("pos_cols: int32")
    .Input("n_pos: int32")
    .Input("own: int32")
    .Output("cols: int32")
    .Output("picks: int32")
    .Attr("T: {float, double}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(1));
      return tensorflow::Status();
    });

#define REGISTER(T)                                                                          \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("TripletlabBatchAllCounts").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      BatchAllOp<T>);                                                                        \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("TripletlabSemiHardPicks").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),  \
      SemiHardOp<T>);

REGISTER(float)
REGISTER(double)

#endif  // TRIPLETLAB_NO_TENSORFLOW
