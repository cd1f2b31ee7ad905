#include "dist/host_staged_communicator.h"

namespace mh {

Tensor HostStagedCommunicator::to_host(const Tensor& t) {
  Tensor h = Tensor::empty(t.shape(), t.dtype());
  be_.copy(t, h);  // synchronizes: the device data is final before MPI reads it
  return h;
}

void HostStagedCommunicator::back(const Tensor& host, Tensor& device) {
  be_.copy(host, device);
}

Work HostStagedCommunicator::all_reduce(Tensor& buf, ReduceOp op) {
  Tensor h = to_host(buf);
  inner_.all_reduce(h, op).wait();
  back(h, buf);
  return Work();
}

Work HostStagedCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  Tensor hin = to_host(in), hout = Tensor::empty(out.shape(), out.dtype());
  inner_.reduce_scatter(hin, hout, op).wait();
  back(hout, out);
  return Work();
}

Work HostStagedCommunicator::all_gather(const Tensor& in, Tensor& out) {
  Tensor hin = to_host(in), hout = Tensor::empty(out.shape(), out.dtype());
  inner_.all_gather(hin, hout).wait();
  back(hout, out);
  return Work();
}

Work HostStagedCommunicator::broadcast(Tensor& buf, int root) {
  Tensor h = to_host(buf);
  inner_.broadcast(h, root).wait();
  back(h, buf);
  return Work();
}

}  // namespace mh
