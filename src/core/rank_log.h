// Per-rank logging by redirecting std::cout: every rank writes its own log file; world rank 0
// also prints to the terminal. Code keeps writing to std::cout and needs no rank checks.
#pragma once

#include <fstream>
#include <iostream>
#include <memory>
#include <streambuf>
#include <string>

namespace mh {

// Writes to two stream buffers at once.
class TeeBuf : public std::streambuf {
 public:
  TeeBuf(std::streambuf* a, std::streambuf* b) : a_(a), b_(b) {}

 protected:
  int overflow(int c) override {
    if (c == traits_type::eof()) return traits_type::not_eof(c);
    const char ch = static_cast<char>(c);
    const bool ok_a = a_->sputc(ch) != traits_type::eof();
    const bool ok_b = b_->sputc(ch) != traits_type::eof();
    return ok_a && ok_b ? c : traits_type::eof();
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    a_->sputn(s, n);
    b_->sputn(s, n);
    return n;
  }
  int sync() override { return (a_->pubsync() == 0 && b_->pubsync() == 0) ? 0 : -1; }

 private:
  std::streambuf* a_;
  std::streambuf* b_;
};

// While alive, std::cout goes to `path` (rank != 0) or to the terminal and `path` (rank 0).
class RankLog {
 public:
  RankLog(const std::string& path, int rank) : file_(path, std::ios::trunc) {
    if (!file_) return;  // no log file: keep the terminal as it is
    old_ = std::cout.rdbuf();
    if (rank == 0) {
      tee_ = std::make_unique<TeeBuf>(old_, file_.rdbuf());
      std::cout.rdbuf(tee_.get());
    } else {
      std::cout.rdbuf(file_.rdbuf());
    }
  }
  ~RankLog() {
    if (old_) {
      std::cout.flush();
      std::cout.rdbuf(old_);
    }
  }
  RankLog(const RankLog&) = delete;
  RankLog& operator=(const RankLog&) = delete;

 private:
  std::ofstream file_;
  std::streambuf* old_ = nullptr;
  std::unique_ptr<TeeBuf> tee_;
};

}  // namespace mh
