#include "flowrl_session.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

namespace flowrl {
namespace {

namespace v1 = flowrl::v1;

// Status codes after which a control loop carries on with its fallback; the others are mistakes to fix.
bool Transient(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
      return true;
    default:
      return false;
  }
}

bool Transient(int code) {  // a code this client does not know (a newer server's) is no mistake to fix
  return code < 0 || code > 16 || Transient(static_cast<grpc::StatusCode>(code));
}

std::string CodeName(int code) {
  static const char* const kNames[] = {
      "OK",           "CANCELLED",          "UNKNOWN",         "INVALID_ARGUMENT",  "DEADLINE_EXCEEDED",
      "NOT_FOUND",    "ALREADY_EXISTS",     "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",      "OUT_OF_RANGE",       "UNIMPLEMENTED",   "INTERNAL",          "UNAVAILABLE",
      "DATA_LOSS",    "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "code " + std::to_string(code);
}

std::string Describe(int code, const std::string& message) {
  return message.empty() ? CodeName(code) : CodeName(code) + ": " + message;
}

// Tensors travel as little-endian float32 bytes, whatever the host's byte order.
v1::Tensor Encode(const std::vector<float>& values) {
  v1::Tensor tensor;
  tensor.set_dtype(v1::DTYPE_FLOAT32);
  tensor.add_shape(static_cast<int64_t>(values.size()));
  std::string data(values.size() * 4, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    for (int b = 0; b < 4; ++b) data[4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xFF);
  }
  tensor.set_data(std::move(data));
  return tensor;
}

// The float32 values of a reply's [n] tensor (packed bytes or repeated values); empty if malformed.
std::vector<float> Decode(const v1::Tensor& tensor, int n) {
  if (tensor.dtype() != v1::DTYPE_FLOAT32 && tensor.dtype() != v1::DTYPE_UNSPECIFIED) return {};
  if (tensor.shape_size() != 1 || tensor.shape(0) != n) return {};
  if (tensor.values_size() > 0) return {tensor.values().begin(), tensor.values().end()};
  const std::string& data = tensor.data();
  if (data.size() % 4 != 0) return {};
  std::vector<float> values(data.size() / 4);
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits = 0;
    for (int b = 0; b < 4; ++b) bits |= static_cast<uint32_t>(static_cast<unsigned char>(data[4 * i + b])) << (8 * b);
    std::memcpy(&values[i], &bits, 4);
  }
  return values;
}

int64_t UnixNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void Authorize(grpc::ClientContext& context, const std::string& token) {
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
}

}  // namespace

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, const ChannelOptions& options) {
  grpc::ChannelArguments args;  // the Python client's CHANNEL_OPTIONS (flowrl_deploy/client.py) say why
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);  // gRPC's default waits 1 s, then longer and longer
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 2000);    // the time one connection attempt gets
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt("grpc.http2.ping_timeout_ms", 5000);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a new channel is a new connection (Connection::Renew)
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.ca_pem.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.ca_pem;
    ssl.pem_cert_chain = options.cert_pem;
    ssl.pem_private_key = options.key_pem;
    credentials = grpc::SslCredentials(ssl);
  }
  return grpc::CreateCustomChannel(target, credentials, args);
}

v1::GetSpecReply GetSpec(const std::shared_ptr<grpc::Channel>& channel, const std::string& token,
                         std::chrono::milliseconds wait) {
  auto stub = v1::PolicyService::NewStub(channel);
  const auto until = std::chrono::system_clock::now() + wait;
  while (true) {
    grpc::ClientContext context;
    Authorize(context, token);
    context.set_deadline(until);
    context.set_wait_for_ready(true);  // a server not listening yet is waited for, up to `until`
    v1::GetSpecReply spec;
    grpc::Status status = stub->GetSpec(&context, v1::GetSpecRequest(), &spec);
    if (status.ok()) return spec;
    std::string why = Describe(status.error_code(), status.error_message());
    if (!Transient(status.error_code())) throw SessionRefused("the server refused GetSpec: " + why);
    const auto retry = std::chrono::system_clock::now() + std::chrono::milliseconds(100);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || retry >= until) {  // UNAVAILABLE: still loading
      char waited[32];
      std::snprintf(waited, sizeof waited, "%g", wait.count() / 1000.0);
      throw std::runtime_error(std::string("no answer from the server within ") + waited +
                               " s (is flowrl serve running there? one with TLS needs --ca): " + why);
    }
    std::this_thread::sleep_until(retry);
  }
}

// One open StreamAct call: Act() writes on the caller's thread, a reader thread queues the replies.
class ControlSession::Stream {
 public:
  Stream(const std::shared_ptr<grpc::Channel>& channel, const std::string& token) {
    Authorize(context_, token);
    call_ = v1::PolicyService::NewStub(channel)->StreamAct(&context_);  // the call holds the channel
    reader_ = std::thread([this] { Read(); });
  }

  ~Stream() {
    if (finished_) return;
    context_.TryCancel();  // ends the server's session and our Read()
    reader_.join();
    call_->Finish();
  }

  bool Write(const v1::StreamActRequest& request) { return call_->Write(request); }

  // The next reply, waited for until `until`: nullopt at `until`, or once the call has ended (Ended()).
  std::optional<Reply> Next(Clock::time_point until) {
    std::unique_lock<std::mutex> lock(mutex_);
    arrived_.wait_until(lock, until, [this] { return !replies_.empty() || ended_; });
    if (replies_.empty()) return std::nullopt;
    Reply reply = std::move(replies_.front());
    replies_.pop_front();
    return reply;
  }

  bool Ended() {
    std::lock_guard<std::mutex> lock(mutex_);
    return ended_ && replies_.empty();
  }

  // How the call ended; only after Ended() (the reader is done: no Read() runs beside Finish()).
  grpc::Status Finish() {
    reader_.join();
    finished_ = true;
    return call_->Finish();
  }

 private:
  void Read() {
    Reply reply;
    while (call_->Read(&reply)) {
      std::lock_guard<std::mutex> lock(mutex_);
      replies_.push_back(std::move(reply));
      arrived_.notify_one();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    ended_ = true;
    arrived_.notify_one();
  }

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StreamActRequest, Reply>> call_;
  std::thread reader_;
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::deque<Reply> replies_;
  bool ended_ = false;
  bool finished_ = false;
};

ControlSession::ControlSession(Connection connection, v1::GetSpecReply spec, SessionOptions options)
    : connection_(std::move(connection)),
      spec_(std::move(spec)),
      options_(std::move(options)),
      retry_in_(options_.backoff_min) {
  if (options_.period.count() <= 0) throw std::invalid_argument("the control period must be positive");
  if (options_.deadline.count() <= 0) options_.deadline = options_.period / 2;
  if (options_.deadline > options_.period)
    throw std::invalid_argument("the deadline is longer than the control period: a tick would wait past the next one");
  const int act_dim = spec_.act_dim();
  if (spec_.action_low_size() != act_dim || spec_.action_high_size() != act_dim)
    throw std::invalid_argument("the spec's action bounds do not have act_dim entries");
  for (int i = 0; i < act_dim; ++i)  // held until the first fresh action: the middle of the bounds
    last_action_.push_back(0.5f * (spec_.action_low(i) + spec_.action_high(i)));
  last_fresh_ = Clock::now();
  connector_ = std::thread([this] { KeepConnected(); });  // last: nothing after it may throw
}

ControlSession::~ControlSession() {
  {
    std::lock_guard<std::mutex> lock(channel_mutex_);
    stopping_ = true;
  }
  stopping_cv_.notify_all();
  connector_.join();  // within one of its waits, 0.1 s at most
}

std::shared_ptr<grpc::Channel> ControlSession::Channel() {
  std::lock_guard<std::mutex> lock(channel_mutex_);
  return connection_.channel();
}

void ControlSession::KeepConnected() {
  // gRPC's sync API moves a connection on only while a call or a wait on the channel runs: this thread's
  // WaitForStateChange is that wait. A failed attempt (TRANSIENT_FAILURE) is followed by a new channel, after
  // the backoff: gRPC's own reconnection (release 1.51 at least) can wait seconds after a server restart.
  std::chrono::milliseconds backoff = options_.backoff_min;
  std::minstd_rand jitter{std::random_device{}()};
  while (true) {
    std::shared_ptr<grpc::Channel> channel = Channel();
    const grpc_connectivity_state state = channel->GetState(/*try_to_connect=*/true);
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      std::uniform_int_distribution<int64_t> wait(backoff.count() / 2, backoff.count());
      backoff = std::min(backoff * 2, options_.backoff_max);
      std::unique_lock<std::mutex> lock(channel_mutex_);
      if (stopping_cv_.wait_for(lock, std::chrono::milliseconds(wait(jitter)), [this] { return stopping_; })) return;
      connection_.Renew();
      continue;
    }
    if (state == GRPC_CHANNEL_READY) backoff = options_.backoff_min;
    channel->WaitForStateChange(state, std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    std::lock_guard<std::mutex> lock(channel_mutex_);
    if (stopping_) return;
  }
}

Tick ControlSession::Act(const std::vector<float>& obs) {
  if (static_cast<int>(obs.size()) != spec_.obs_dim())
    throw std::invalid_argument("the observation has " + std::to_string(obs.size()) + " values; the policy takes " +
                                std::to_string(spec_.obs_dim()));
  for (size_t i = 0; i < obs.size(); ++i)  // the server would refuse it, and end the stream
    if (!std::isfinite(obs[i]))
      throw std::invalid_argument("observation entry " + std::to_string(i) + " is not finite: " + std::to_string(obs[i]));
  const Clock::time_point start = Clock::now();
  Tick tick;
  auto outcome = Exchange(obs, ++seq_, start + options_.deadline);
  if (auto* reply = std::get_if<Reply>(&outcome)) {
    std::vector<float> action = Decode(reply->action(), spec_.act_dim());
    if (ValidAction(action)) {
      for (int i = 0; i < spec_.act_dim(); ++i)  // within float32's rounding of the bounds: onto them
        action[i] = std::clamp(action[i], spec_.action_low(i), spec_.action_high(i));
      last_action_ = std::move(action);
      last_fresh_ = Clock::now();
      tick.fresh = true;
      tick.round_trip = std::chrono::duration_cast<std::chrono::microseconds>(last_fresh_ - start);
      tick.model_version = reply->model_version();
    } else {
      tick.reason = "invalid action";
    }
  } else {
    tick.reason = std::get<std::string>(outcome);
  }
  misses_ = tick.fresh ? 0 : misses_ + 1;
  if (options_.max_consecutive_misses > 0 && misses_ >= options_.max_consecutive_misses)
    throw WatchdogError(std::to_string(misses_) + " ticks in a row without a fresh action (the last: " +
                        tick.reason + ")");
  const auto stale = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_fresh_);
  if (!tick.fresh && options_.max_staleness.count() > 0 && stale > options_.max_staleness)
    throw WatchdogError("no fresh action for " + std::to_string(stale.count()) + " ms (the last reason: " +
                        tick.reason + ")");
  tick.action = last_action_;
  return tick;
}

std::variant<ControlSession::Reply, std::string> ControlSession::Exchange(const std::vector<float>& obs,
                                                                         uint64_t seq, Clock::time_point until) {
  Stream* stream = LiveStream();
  if (stream == nullptr) return down_reason_;
  while (Behind()) {  // wait for the server to catch up rather than add to its queue
    std::optional<Reply> reply = stream->Next(until);
    if (!reply) return stream->Ended() ? Broken() : "backlog";
    Take(*reply);
  }
  v1::StreamActRequest request;
  request.set_session_id(options_.session_id);
  request.set_seq(seq);
  *request.mutable_obs() = Encode(obs);
  request.set_client_send_unix_ns(UnixNanos());
  auto budget = std::chrono::duration_cast<std::chrono::microseconds>(until - Clock::now()).count();
  request.set_timeout_us(std::max<int64_t>(1, budget));  // past it the server answers DEADLINE_EXCEEDED
  if (!opened_) {  // the request that may open the session carries its seed and pin
    if (options_.seed) request.set_seed(*options_.seed);
    request.set_contract_hash(options_.contract_hash);
  }
  if (!stream->Write(request)) return Broken();
  sent_.emplace_back(seq, Clock::now());
  while (true) {
    std::optional<Reply> reply = stream->Next(until);
    if (!reply) return stream->Ended() ? Broken() : "deadline";
    Take(*reply);
    if (reply->seq() != seq) continue;  // the late answer to an earlier tick
    const int code = reply->status().code();
    if (code == 0) {
      opened_ = true;
      retry_in_ = options_.backoff_min;
      return *std::move(reply);
    }
    return CodeName(code);
  }
}

ControlSession::Stream* ControlSession::LiveStream() {
  if (stream_) return stream_.get();
  const Clock::time_point now = Clock::now();
  if (now < retry_at_) return nullptr;
  // Opening a stream on a channel still connecting waits for the connection (its whole 2 s attempt against
  // a host that never answers): only on a connected one, then (KeepConnected); meanwhile the ticks fall back.
  std::shared_ptr<grpc::Channel> channel = Channel();
  if (channel->GetState(/*try_to_connect=*/false) != GRPC_CHANNEL_READY) return nullptr;
  RetryLater(now);
  opened_ = false;
  sent_.clear();
  stream_ = std::make_unique<Stream>(channel, options_.token);
  return stream_.get();
}

void ControlSession::RetryLater(Clock::time_point now) {
  // Each wait drawn from [half, all] of the backoff, so that robots that lost one server do not retry in step.
  std::uniform_int_distribution<int64_t> wait(retry_in_.count() / 2, retry_in_.count());
  retry_at_ = now + std::chrono::milliseconds(wait(jitter_));
  retry_in_ = std::min(retry_in_ * 2, options_.backoff_max);
}

bool ControlSession::Behind() const {
  return !sent_.empty() && Clock::now() - sent_.front().second >= 2 * std::max(options_.period, options_.deadline);
}

void ControlSession::Take(const Reply& reply) {
  Answered(reply.seq());
  const int code = reply.status().code();
  if (code != 0 && !Transient(code))
    throw SessionRefused("the server refused the session: " + Describe(code, reply.status().message()));
}

void ControlSession::Answered(uint64_t seq) {  // a stream answers in order: every tick up to seq is answered
  while (!sent_.empty() && sent_.front().first <= seq) sent_.pop_front();
}

std::string ControlSession::Broken() {
  grpc::Status status = stream_->Finish();
  stream_.reset();
  if (!Transient(status.error_code()) && !status.ok())
    throw SessionRefused("the server refused the stream: " + Describe(status.error_code(), status.error_message()));
  const bool gone = status.ok() || status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                    status.error_code() == grpc::StatusCode::CANCELLED;
  down_reason_ = gone ? "disconnected" : CodeName(status.error_code());
  if (Clock::now() >= retry_at_) RetryLater(Clock::now());  // a new stream after the backoff, not at once
  return down_reason_;
}

bool ControlSession::ValidAction(const std::vector<float>& action) const {
  if (static_cast<int>(action.size()) != spec_.act_dim()) return false;
  for (int i = 0; i < spec_.act_dim(); ++i) {
    const float low = spec_.action_low(i), high = spec_.action_high(i);
    const float slack = 1e-5f * (std::fabs(low) + std::fabs(high) + 1.0f);  // float32 rounding of the rescale
    if (!std::isfinite(action[i]) || action[i] < low - slack || action[i] > high + slack) return false;
  }
  return true;
}

}  // namespace flowrl
