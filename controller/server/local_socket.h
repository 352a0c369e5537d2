// The Control API on a Unix socket of the controller's host, with the caller's uid.
//
// gRPC 1.51 does not hand a handler the credentials of a Unix socket's peer (its "local"
// credentials only say that the transport is a Unix socket). So this class accepts on the socket
// itself, reads the peer's credentials with SO_PEERCRED, and gives the connected fd to the server
// with grpc::AddInsecureChannelFromFd (grpcpp/server_posix.h). gRPC names such a connection
// "fd:N" (N the fd number; ServerContext::peer() returns it, checked by
// tests/e2e/auth_test.cpp), and uidOf() maps that name back to the uid read at accept. A number
// reused by a later connection is overwritten at that accept; a call is mapped at its start,
// while its connection holds the number.
#pragma once

#include <sys/types.h>

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace grpc {
class Server;
}

namespace faultline::controller {

class LocalSocket {
 public:
  // path: the socket's path; group: the group that may connect (mode 0660), or when there is no
  // such group, mode 0600 (only the controller's user and root), said in the log.
  LocalSocket(std::string path, std::string group);
  ~LocalSocket();  // stop()
  LocalSocket(const LocalSocket&) = delete;
  LocalSocket& operator=(const LocalSocket&) = delete;

  // Creates the socket's directory when missing (0755), removes a stale socket (one nobody
  // listens on), binds and sets its mode and group. Never follows or blocks on what is at path:
  // anything there but a socket is refused.
  // errors: std::runtime_error naming the path and what failed (errno's words).
  void bind();
  // Starts accepting on a thread; each connection is handed to server (already started).
  void start(grpc::Server& server);
  // Stops accepting, joins the thread, removes the socket file. Connections handed over stay
  // the server's. Idempotent.
  void stop();

  // The uid of the peer of the connection gRPC names peer ("fd:N"), or nullopt for any other
  // connection.
  [[nodiscard]] std::optional<uid_t> uidOf(const std::string& peer) const;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  void acceptLoop(grpc::Server& server);

  std::string path_;
  std::string group_;
  int listenFd_ = -1;
  bool bound_ = false;  // path_ is this object's socket (stop() removes it)
  int wakeFd_ = -1;     // eventfd: stop() wakes the accept loop
  std::thread thread_;
  mutable std::mutex mutex_;
  std::map<int, uid_t> peers_;  // fd handed to gRPC -> its peer's uid
};

}  // namespace faultline::controller
