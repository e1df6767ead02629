// The merge of a LoRA term into converted weights (adapter.cpp): the one place
// where W + scale * B A and DoRA's per-output-row magnitude are formed.
#pragma once

#include <string>

#include "postsvd/types.h"

namespace postsvd {
namespace detail {

/// w <- w + delta.scale * left * right, then DoRA's magnitude when delta has one (LowRankDelta).
/// `name` is the weights' view name, for messages. InvalidArgument naming the tensor when
/// a factor or the result is not finite, or when shapes do not fit.
template <class T>
void add_low_rank(const LowRankDelta& delta, Matrix<T>& w, const std::string& name);

}  // namespace detail
}  // namespace postsvd
