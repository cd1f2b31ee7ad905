// Data: make_batch, the pairs reader and its errors, the synthetic tasks and their held-out split,
// and the batcher's determinism and rank-independence.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "data/batch.h"
#include "data/batcher.h"
#include "data/pairs.h"
#include "data/toy.h"

namespace mh {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;

Ids ints(const Tensor& t) {
  Ids v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.data<int32_t>()[i];
  return v;
}

bool same(const Example& a, const Example& b) {
  return a.src == b.src && a.tgt == b.tgt;
}
bool same(const std::vector<Example>& a, const std::vector<Example>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!same(a[i], b[i])) return false;
  return true;
}

// ---- make_batch ------------------------------------------------------------------------------

TEST(MakeBatch, PadsShiftsAndCounts) {
  std::vector<Example> ex = {
      {{5, 6, 7, 2}, {1, 8, 9, 2}},
      {{5, 2}, {1, 8, 9, 10, 11, 2}},
  };
  Batch b = make_batch(ex, 0);
  EXPECT_EQ(b.input.src.shape(), (Shape{2, 4}));
  EXPECT_EQ(b.input.tgt_in.shape(), (Shape{2, 5}));
  EXPECT_EQ(b.labels.shape(), (Shape{2, 5}));
  EXPECT_EQ(b.input.src.dtype(), DType::i32);
  EXPECT_EQ(b.labels.dtype(), DType::i32);
  EXPECT_EQ(ints(b.input.src), (Ids{5, 6, 7, 2, /**/ 5, 2, 0, 0}));
  EXPECT_EQ(ints(b.input.tgt_in), (Ids{1, 8, 9, 0, 0, /**/ 1, 8, 9, 10, 11}));
  EXPECT_EQ(ints(b.labels), (Ids{8, 9, 2, 0, 0, /**/ 8, 9, 10, 11, 2}));
  EXPECT_EQ(b.input.src_len, (Ids{4, 2}));
  EXPECT_EQ(b.input.tgt_len, (Ids{3, 5}));
  EXPECT_EQ(b.src_tokens, 6);
  EXPECT_EQ(b.tgt_tokens, 8);

  Batch c = make_batch(ex, 3);  // any pad id
  EXPECT_EQ(ints(c.labels), (Ids{8, 9, 2, 3, 3, /**/ 8, 9, 10, 11, 2}));
}

TEST(MakeBatch, EmptyListGivesEmptyBatch) {
  Batch b = make_batch({}, 0);
  EXPECT_EQ(b.input.src.shape(), (Shape{0, 0}));
  EXPECT_EQ(b.labels.numel(), 0);
  EXPECT_EQ(b.tgt_tokens, 0);
}

// ---- read_pairs ------------------------------------------------------------------------------

class PairsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mh_pairs_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    m_.vocab_size = 20;
    m_.max_len = 6;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    std::string p = (fs::path(dir_) / name).string();
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  // Expects read_pairs to throw a one-line UserError equal to "<path>" + suffix.
  void expect_error(const std::string& text, const std::string& suffix) {
    std::string p = write("bad.pairs", text);
    try {
      read_pairs(p, m_, d_);
      ADD_FAILURE() << "no error for " << suffix;
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()), p + suffix);
    }
  }

  std::string dir_;
  ModelConfig m_;
  DataConfig d_;
};

TEST_F(PairsTest, ReadsAndAddsSpecials) {
  // Line 1: bare ids; line 2: specials already there, CRLF; line 3: extra spaces, no final newline.
  std::string p = write("good.pairs", "5 6\t7 8\n9 2\t1 10 2\r\n 11  12 \t13");
  std::vector<Example> ex = read_pairs(p, m_, d_);
  ASSERT_EQ(ex.size(), 3u);
  EXPECT_EQ(ex[0].src, (Ids{5, 6, 2}));
  EXPECT_EQ(ex[0].tgt, (Ids{1, 7, 8, 2}));
  EXPECT_EQ(ex[1].src, (Ids{9, 2}));
  EXPECT_EQ(ex[1].tgt, (Ids{1, 10, 2}));
  EXPECT_EQ(ex[2].src, (Ids{11, 12, 2}));
  EXPECT_EQ(ex[2].tgt, (Ids{1, 13, 2}));

  // Exactly max_len tokens after the specials is fine; a final newline is fine.
  p = write("edge.pairs", "3 4 5 6 7\t3 4 5 6\n");
  ex = read_pairs(p, m_, d_);
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].src.size(), 6u);
  EXPECT_EQ(ex[0].tgt.size(), 6u);
}

TEST_F(PairsTest, ErrorsNameFileAndLine) {
  expect_error("5 6\t7\n5 40\t7\n", ":2: token id 40 >= model.vocab_size (20)");
  expect_error("5 6\t7\n5 6 7\n", ":2: expected 'source ids<TAB>target ids', got no tab");
  expect_error("5 6\t7\t8\n", ":1: expected 'source ids<TAB>target ids', got more than one tab");
  expect_error("5 x6\t7\n", ":1: expected an integer token id in the source, got 'x6'");
  expect_error("5\t7 1.5\n", ":1: expected an integer token id in the target, got '1.5'");
  expect_error("5\t-3\n", ":1: token id -3 is negative");
  expect_error("5\t99999999999999999999\n",
               ":1: token id 99999999999999999999 >= model.vocab_size (20)");
  expect_error("5\t7 0\n",
               ":1: token id 0 in the target is model.pad_id; padding cannot appear inside a "
               "sentence");
  expect_error("5\t7\n\n5\t7\n", ":2: expected 'source ids<TAB>target ids', got an empty line");
  expect_error("5\t7\n\n", ":2: expected 'source ids<TAB>target ids', got an empty line");
  expect_error("5\t7\n \t7\n", ":2: empty source (expected at least one token id)");
  expect_error("5\t\n", ":1: empty target (expected at least one token id)");
  expect_error("3 4 5 6 7 8\t7\n",
               ":1: source has 7 tokens with BOS/EOS, more than "
               "model.max_len (6)");
  expect_error("3\t4 5 6 7 8\n",
               ":1: target has 7 tokens with BOS/EOS, more than "
               "model.max_len (6)");
  expect_error("", ": no sentence pairs (empty file)");

  std::string missing = (fs::path(dir_) / "missing.pairs").string();
  try {
    read_pairs(missing, m_, d_);
    ADD_FAILURE() << "no error for a missing file";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), missing + ": cannot read file (No such file or directory)");
  }
}

// ---- synthetic tasks -------------------------------------------------------------------------

ModelConfig toy_model() {
  ModelConfig m;
  m.vocab_size = 64;
  m.max_len = 64;
  return m;
}

DataConfig toy_data(const std::string& task) {
  DataConfig d;
  d.task = task;
  d.toy_valid_size = 200;
  return d;
}

TEST(NumberWords, KnownValues) {
  EXPECT_EQ(number_to_words(0), "zero");
  EXPECT_EQ(number_to_words(7), "seven");
  EXPECT_EQ(number_to_words(13), "thirteen");
  EXPECT_EQ(number_to_words(40), "forty");
  EXPECT_EQ(number_to_words(99), "ninety nine");
  EXPECT_EQ(number_to_words(105), "one hundred five");
  EXPECT_EQ(number_to_words(1000), "one thousand");
  EXPECT_EQ(number_to_words(20019), "twenty thousand nineteen");
  EXPECT_EQ(number_to_words(342017), "three hundred forty two thousand seventeen");
  EXPECT_EQ(number_to_words(1000000), "one million");
  EXPECT_EQ(number_to_words(7000300), "seven million three hundred");
  EXPECT_EQ(number_to_words(999999999),
            "nine hundred ninety nine million nine hundred ninety nine thousand nine hundred "
            "ninety nine");
}

TEST(ToyTask, VocabularyMatchesTheConfigIds) {
  ToyTask t(toy_model(), toy_data("reverse"));
  const ToyVocab& v = t.vocab();
  EXPECT_EQ(t.vocab_size_needed(), 4 + 20);
  EXPECT_EQ(v.words[0], "<pad>");
  EXPECT_EQ(v.words[DataConfig{}.bos_id], "<s>");
  EXPECT_EQ(v.words[DataConfig{}.eos_id], "</s>");
  EXPECT_EQ(v.words[3], "<unk>");
  EXPECT_EQ(v.words[4], "a");
  EXPECT_EQ(ModelConfig{}.pad_id, ToyVocab::kPad);
  EXPECT_EQ(v.decode({1, 4, 5, 6, 2, 7, 0}), "a b c");
  EXPECT_EQ(v.decode({4, 99}), "a <99>");
  EXPECT_EQ(v.encode("a b  c"), (Ids{4, 5, 6}));
  EXPECT_EQ(v.encode("abc zz"), (Ids{4, 5, 6, 3}));

  ToyTask n(toy_model(), toy_data("numbers"));
  EXPECT_EQ(n.vocab_size_needed(), 4 + 10 + 20 + 8 + 3);
  EXPECT_EQ(n.vocab().encode("342"), (Ids{7, 8, 6}));
  EXPECT_EQ(n.vocab().decode(n.make_example({7, 8, 6}).tgt), "three hundred forty two");
}

TEST(ToyTask, ReverseTargetsAreReversedSources) {
  DataConfig d = toy_data("reverse");
  ToyTask t(toy_model(), d);
  std::set<int64_t> lengths;
  for (uint64_t i = 0; i < 2000; ++i) {
    Example e = t.example(i);
    ASSERT_GE(e.src.size(), 2u);
    EXPECT_EQ(e.src.back(), 2);
    Ids body(e.src.begin(), e.src.end() - 1);
    lengths.insert(static_cast<int64_t>(body.size()));
    for (int32_t id : body) {
      EXPECT_GE(id, 4);
      EXPECT_LT(id, 4 + d.toy_symbols);
    }
    Ids expected = {1};
    expected.insert(expected.end(), body.rbegin(), body.rend());
    expected.push_back(2);
    EXPECT_EQ(e.tgt, expected);
    EXPECT_TRUE(same(e, t.example(i)));  // a pure function of the index
  }
  EXPECT_EQ(*lengths.begin(), d.toy_min_len);
  EXPECT_EQ(*lengths.rbegin(), d.toy_max_len);
  EXPECT_EQ(t.max_src_len(), d.toy_max_len + 1);
  EXPECT_EQ(t.max_tgt_len(), d.toy_max_len + 2);

  DataConfig d2 = d;
  d2.seed = d.seed + 1;
  ToyTask t2(toy_model(), d2);
  int differ = 0;
  for (uint64_t i = 0; i < 50; ++i) differ += !same(t.example(i), t2.example(i));
  EXPECT_GT(differ, 40);
}

TEST(ToyTask, NumbersTargetsSpellTheSource) {
  DataConfig d = toy_data("numbers");
  d.toy_min_len = 1;
  ToyTask t(toy_model(), d);
  std::set<size_t> digits;
  for (uint64_t i = 0; i < 2000; ++i) {
    Example e = t.example(i);
    std::string src = t.vocab().decode(e.src);  // "3 4 2"
    std::string number;
    for (char c : src)
      if (c != ' ') number += c;
    digits.insert(number.size());
    ASSERT_FALSE(number.empty());
    EXPECT_TRUE(number.size() == 1 || number[0] != '0') << number;
    EXPECT_EQ(t.vocab().decode(e.tgt), number_to_words(std::stoll(number))) << number;
    EXPECT_EQ(e.tgt.front(), 1);
    EXPECT_EQ(e.tgt.back(), 2);
    EXPECT_LE(static_cast<int64_t>(e.tgt.size()), t.max_tgt_len());
  }
  EXPECT_EQ(*digits.begin(), 1u);
  EXPECT_EQ(*digits.rbegin(), 9u);  // toy_max_len 12 is capped at 9 digits
  EXPECT_EQ(t.max_tgt_len(), 16);
}

TEST(ToyTask, HeldOutSetIsDisjointFromTraining) {
  for (const char* task : {"reverse", "numbers"}) {
    DataConfig d = toy_data(task);
    ToyTask t(toy_model(), d);
    ASSERT_EQ(static_cast<int64_t>(t.valid().size()), d.toy_valid_size) << task;
    std::set<Ids> held;
    for (const Example& e : t.valid()) {
      Ids body(e.src.begin(), e.src.end() - 1);
      EXPECT_TRUE(t.held_out(body));
      EXPECT_TRUE(held.insert(e.src).second) << "duplicate held-out example";
      EXPECT_TRUE(same(e, t.make_example(body)));
    }
    int64_t clashes = 0;
    for (uint64_t i = 0; i < 100000; ++i) clashes += held.count(t.example(i).src);
    EXPECT_EQ(clashes, 0) << task;

    // The split does not depend on the seed: another seed's training data avoids it too.
    DataConfig d2 = d;
    d2.seed = 99;
    d2.toy_valid_size = 0;
    ToyTask t2(toy_model(), d2);
    for (uint64_t i = 0; i < 20000; ++i) clashes += held.count(t2.example(i).src);
    EXPECT_EQ(clashes, 0) << task;
  }
}

TEST(ToyTask, ValidatesTheConfig) {
  auto error_of = [](ModelConfig m, DataConfig d) -> std::string {
    try {
      ToyTask t(m, d);
    } catch (const UserError& e) {
      return e.what();
    }
    return "";
  };
  ModelConfig m = toy_model();
  m.vocab_size = 20;
  EXPECT_EQ(error_of(m, toy_data("reverse")),
            "model.vocab_size (20) is smaller than the reverse task's vocabulary (24 = 4 specials "
            "+ 20 symbols)");
  m = toy_model();
  m.max_len = 13;
  EXPECT_EQ(error_of(m, toy_data("reverse")),
            "model.max_len (13) is shorter than the longest reverse sequence (14 tokens with "
            "BOS/EOS for data.toy_max_len 12)");
  DataConfig d = toy_data("reverse");
  d.bos_id = 5;
  EXPECT_NE(error_of(toy_model(), d).find("data.bos_id (5) must be 1"), std::string::npos);
  d = toy_data("reverse");
  d.toy_symbols = 2;
  d.toy_min_len = d.toy_max_len = 3;  // 8 sequences: too few to hold out 200
  EXPECT_NE(error_of(toy_model(), d).find("data.toy_valid_size (200) is more than"),
            std::string::npos);
  EXPECT_NE(error_of(toy_model(), toy_data("copy")).find("data.task"), std::string::npos);
}

// ---- batcher ---------------------------------------------------------------------------------

std::vector<Example> concat_shares(Batcher& b, int64_t step, int world) {
  std::vector<Example> all;
  size_t smallest = SIZE_MAX, largest = 0;
  for (int r = 0; r < world; ++r) {
    std::vector<Example> part = b.examples_at(step, r, world);
    smallest = std::min(smallest, part.size());
    largest = std::max(largest, part.size());
    all.insert(all.end(), part.begin(), part.end());
  }
  EXPECT_LE(largest - smallest, 1u);
  return all;
}

std::vector<Example> numbered_examples(int n) {
  std::vector<Example> ex;
  for (int i = 0; i < n; ++i) ex.push_back({{5 + i, 2}, {1, 5 + i, 2}});
  return ex;
}

TEST(Batcher, ShareSplitsContiguouslyAndEvenly) {
  EXPECT_EQ(Batcher::share(10, 0, 4), (std::pair<int64_t, int64_t>{0, 3}));
  EXPECT_EQ(Batcher::share(10, 1, 4), (std::pair<int64_t, int64_t>{3, 6}));
  EXPECT_EQ(Batcher::share(10, 2, 4), (std::pair<int64_t, int64_t>{6, 8}));
  EXPECT_EQ(Batcher::share(10, 3, 4), (std::pair<int64_t, int64_t>{8, 10}));
  EXPECT_EQ(Batcher::share(2, 3, 4), (std::pair<int64_t, int64_t>{2, 2}));
}

TEST(Batcher, ToyStreamIsDeterministicAndRankIndependent) {
  DataConfig d = toy_data("reverse");
  auto task = std::make_shared<const ToyTask>(toy_model(), d);
  for (int64_t bs : {8, 10, 7}) {
    Batcher a(task, bs, 0), b(task, bs, 0);
    for (int64_t step = 0; step < 4; ++step) {
      std::vector<Example> whole = a.examples_at(step);
      ASSERT_EQ(static_cast<int64_t>(whole.size()), bs);
      for (int64_t k = 0; k < bs; ++k) EXPECT_TRUE(same(whole[k], task->example(step * bs + k)));
      EXPECT_TRUE(same(whole, b.examples_at(step)));
      for (int world : {2, 3, 4}) EXPECT_TRUE(same(concat_shares(a, step, world), whole));
      Batch x = a.next_batch();
      EXPECT_EQ(x.input.src.dim(0), bs);
      EXPECT_EQ(ints(x.input.src), ints(make_batch(whole, 0).input.src));
    }
    EXPECT_EQ(a.step(), 4);
  }
}

TEST(Batcher, ExampleListEpochsArePermutations) {
  std::vector<Example> ex = numbered_examples(20);
  Batcher a(ex, 7, 1234, 0), b(ex, 7, 1234, 0), c(ex, 7, 4321, 0);
  EXPECT_EQ(a.epoch_size(), 20);
  // Steps 0..5 cover positions 0..41: epochs 0 and 1 whole, and two of epoch 2.
  std::vector<Example> seq;
  for (int64_t step = 0; step < 6; ++step) {
    std::vector<Example> whole = a.examples_at(step);
    EXPECT_TRUE(same(whole, b.examples_at(step)));
    for (int world : {2, 4, 3}) EXPECT_TRUE(same(concat_shares(a, step, world), whole));
    seq.insert(seq.end(), whole.begin(), whole.end());
  }
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::set<int32_t> seen;
    for (int i = 0; i < 20; ++i) seen.insert(seq[epoch * 20 + i].src[0]);
    EXPECT_EQ(seen.size(), 20u) << "epoch " << epoch << " is not a permutation";
  }
  bool differs = false;
  for (int i = 0; i < 20; ++i) differs |= seq[i].src[0] != seq[20 + i].src[0];
  EXPECT_TRUE(differs) << "each epoch gets a fresh permutation";
  EXPECT_FALSE(same(a.examples_at(0), c.examples_at(0))) << "the seed changes the order";

  // next() walks the same sequence for each rank; seek() jumps to a step.
  Batcher r0(ex, 7, 1234, 0), r1(ex, 7, 1234, 0);
  for (int64_t step = 0; step < 3; ++step) {
    Batch p0 = r0.next(0, 2), p1 = r1.next(1, 2);
    EXPECT_EQ(p0.input.src.dim(0), 4);
    EXPECT_EQ(p1.input.src.dim(0), 3);
    EXPECT_EQ(ints(p0.input.src)[0], seq[step * 7].src[0]);
    EXPECT_EQ(ints(p1.input.src)[0], seq[step * 7 + 4].src[0]);
  }
  r0.seek(5);
  EXPECT_EQ(ints(r0.next_batch().input.src)[0], seq[35].src[0]);
}

TEST(Batcher, BatchesOfKeepsOrderWithAPartialLastBatch) {
  std::vector<Example> ex = numbered_examples(10);
  std::vector<Batch> bs = batches_of(ex, 4, 0);
  ASSERT_EQ(bs.size(), 3u);
  EXPECT_EQ(bs[0].input.src.dim(0), 4);
  EXPECT_EQ(bs[2].input.src.dim(0), 2);
  EXPECT_EQ(ints(bs[1].input.src), (Ids{9, 2, 10, 2, 11, 2, 12, 2}));
  EXPECT_EQ(ints(bs[2].labels), (Ids{13, 2, 14, 2}));
  EXPECT_TRUE(batches_of({}, 4, 0).empty());
}

TEST(Batcher, LoadDatasetFromConfig) {
  ModelConfig m = toy_model();
  DataConfig d = toy_data("numbers");
  d.batch_size = 5;
  Dataset ds = load_dataset(m, d);
  ASSERT_TRUE(ds.toy);
  EXPECT_EQ(ds.valid.size(), 200u);
  EXPECT_EQ(ds.train.next_batch().input.src.dim(0), 5);

  std::string tmpl = (fs::temp_directory_path() / "mh_ds_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  std::string train = tmpl + "/train.pairs";
  std::ofstream(train) << "5 6\t7\n8\t9 10\n11\t12\n";
  d.task = "pairs";
  d.train_pairs = train;
  Dataset p = load_dataset(m, d);
  EXPECT_FALSE(p.toy);
  EXPECT_TRUE(p.valid.empty());
  EXPECT_EQ(p.train.epoch_size(), 3);
  EXPECT_EQ(p.train.next_batch().input.src.dim(0), 5);
  fs::remove_all(tmpl);

  d.train_pairs = "";
  EXPECT_THROW(load_dataset(m, d), UserError);
  d.task = "nope";
  EXPECT_THROW(load_dataset(m, d), UserError);
}

}  // namespace
}  // namespace mh
