// The option table and everything it drives: YAML loading, --set overrides, validation, the
// printed effective config and the key reference. Each key is declared exactly once, in options().
#include "config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <span>
#include <string_view>
#include <type_traits>
#include <variant>

#include "core/error.h"

namespace mh {
namespace {

// ---- the option table -------------------------------------------------------------------------

// A typed pointer to one field of a Config.
using FieldRef = std::variant<int64_t*, uint64_t*, double*, bool*, std::string*, NormPlacement*,
                              Activation*, Precision*, AttnImpl*>;

struct Option {
  std::string_view key;                   // "section.name"
  FieldRef (*field)(Config&);             // where the value lives
  std::vector<std::string_view> choices;  // string options limited to these (empty: any string)
  std::string_view help;
};

// Spellings of the enums, indexed by their underlying value.
constexpr std::string_view kNormNames[] = {"post", "pre"};
constexpr std::string_view kActivationNames[] = {"relu", "gelu"};
constexpr std::string_view kPrecisionNames[] = {"fp32", "bf16", "fp16"};
constexpr std::string_view kAttnImplNames[] = {"naive", "custom", "cudnn", "hopper"};

template <typename E>
std::span<const std::string_view> enum_names() {
  if constexpr (std::is_same_v<E, NormPlacement>) return kNormNames;
  if constexpr (std::is_same_v<E, Activation>) return kActivationNames;
  if constexpr (std::is_same_v<E, Precision>) return kPrecisionNames;
  if constexpr (std::is_same_v<E, AttnImpl>) return kAttnImplNames;
}

#define MH_OPTION(section, name, help)                                                   \
  Option {                                                                               \
#section "." #name, [](Config & c) -> FieldRef { return &c.section.name; }, {}, help \
  }
#define MH_CHOICE(section, name, choices, help)                                               \
  Option {                                                                                    \
#section "." #name, [](Config & c) -> FieldRef { return &c.section.name; }, choices, help \
  }

constexpr std::string_view kSections[] = {"model", "data", "train", "parallel"};

const std::vector<Option>& options() {
  static const std::vector<Option> table = {
      // model
      MH_OPTION(model, vocab_size, "Tokens in the vocabulary (shared by source and target)."),
      MH_OPTION(model, d_model, "Width of the residual stream and the embeddings."),
      MH_OPTION(model, heads, "Attention heads per attention layer; must divide model.d_model."),
      MH_OPTION(model, d_ff, "Inner width of each position-wise feed-forward network."),
      MH_OPTION(model, encoder_layers, "Encoder layers (N in the paper)."),
      MH_OPTION(model, decoder_layers, "Decoder layers (N in the paper)."),
      MH_OPTION(model, dropout,
                "Dropout probability on embeddings+positions and on every sublayer output."),
      MH_OPTION(model, norm,
                "LayerNorm placement: post (the paper: after each residual add) or pre (inside the "
                "residual branch, plus a final norm after each stack)."),
      MH_OPTION(model, norm_eps, "Epsilon added to the variance in every LayerNorm."),
      MH_OPTION(model, activation, "Feed-forward activation: relu (the paper) or gelu (erf form)."),
      MH_OPTION(model, share_embeddings,
                "One matrix for source embedding, target embedding and output projection."),
      MH_OPTION(model, max_len,
                "Longest sequence in tokens, BOS/EOS included (positional-encoding table size)."),
      MH_OPTION(model, attention,
                "Attention implementation on a GPU: custom (our fused flash-style kernels), cudnn "
                "(cuDNN's fused SDPA), naive (GEMM + softmax + GEMM) or hopper (opt-in: the sm_90a "
                "wgmma/TMA forward and backward, the backward not yet run on a GPU; on a GPU "
                "other than sm_90 it runs custom, saying so once). custom, cudnn and hopper need "
                "bf16/fp16 (train.precision); fp32 attention and the CPU backend always compute "
                "it exactly, unfused."),
      MH_OPTION(model, attention_dropout,
                "Dropout probability on the attention probabilities (0 in the paper)."),
      MH_OPTION(model, pad_id, "Token id of padding; never attended to, never in the loss."),
      // data
      MH_CHOICE(data, task, (std::vector<std::string_view>{"reverse", "numbers", "pairs"}),
                "Where batches come from: reverse or numbers (synthetic, generated in memory) or "
                "pairs (pre-tokenized files, 'source ids TAB target ids' per line)."),
      MH_OPTION(data, train_pairs, "Training pairs file (task: pairs)."),
      MH_OPTION(data, valid_pairs, "Validation pairs file (task: pairs; optional)."),
      MH_OPTION(data, batch_size, "Sentence pairs per micro-batch."),
      MH_OPTION(data, bos_id, "Token id of beginning-of-sentence (the decoder's first input)."),
      MH_OPTION(data, eos_id, "Token id of end-of-sentence."),
      MH_OPTION(data, toy_min_len, "Synthetic tasks: shortest source sequence (tokens)."),
      MH_OPTION(data, toy_max_len, "Synthetic tasks: longest source sequence (tokens)."),
      MH_OPTION(data, toy_symbols, "Task reverse: distinct symbols in the alphabet."),
      MH_OPTION(data, toy_valid_size, "Synthetic tasks: held-out examples for validation."),
      MH_OPTION(data, seed, "Seed of the synthetic-data generator and of shuffling."),
      // train
      MH_OPTION(train, steps, "Optimizer steps to run."),
      MH_OPTION(train, seed, "Seed of parameter initialization and dropout."),
      MH_OPTION(train, save, "Safetensors checkpoint written at the end (empty: none)."),
      MH_OPTION(train, init_from, "Safetensors checkpoint read at the start (empty: random init)."),
      MH_OPTION(train, tokens_per_step,
                "Target tokens per optimizer step, reached by accumulating micro-batches "
                "(0: one micro-batch per step)."),
      MH_OPTION(train, lr_scale,
                "Learning rate = lr_scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."),
      MH_OPTION(train, warmup, "Warm-up steps of the learning-rate schedule."),
      MH_OPTION(train, label_smoothing, "Label-smoothing epsilon of the cross-entropy loss."),
      MH_OPTION(train, clip_norm, "Clip the global gradient norm to this value (0: off)."),
      MH_OPTION(train, adam_beta1, "Adam beta1."),
      MH_OPTION(train, adam_beta2, "Adam beta2."),
      MH_OPTION(train, adam_eps, "Adam epsilon."),
      MH_OPTION(train, weight_decay, "Decoupled weight decay (AdamW style; 0: plain Adam)."),
      MH_OPTION(train, precision,
                "Compute precision: fp32, bf16 or fp16 (reduced precisions keep fp32 master "
                "weights)."),
      MH_CHOICE(train, device, (std::vector<std::string_view>{"auto", "cpu", "cuda"}),
                "Where the step runs: auto (cuda if built with it and a GPU is visible), cpu "
                "or cuda (rank r on GPU local_rank % GPUs)."),
      MH_OPTION(train, loss_scale, "fp16 only: initial dynamic loss scale."),
      MH_OPTION(train, loss_scale_window,
                "fp16 only: steps without inf/nan gradients before the loss scale doubles."),
      MH_OPTION(train, log_every, "Steps between progress lines."),
      MH_OPTION(train, eval_every, "Steps between validation evaluations (0: only at the end)."),
      MH_OPTION(train, out_dir, "Directory for the effective config, metrics.jsonl and logs."),
      MH_OPTION(train, threads, "BLAS threads per rank (0: the library's default)."),
      // parallel
      MH_OPTION(parallel, bucket_mb, "Gradient bucket size (MiB) of the data-parallel all-reduce."),
      MH_OPTION(parallel, overlap,
                "All-reduce gradient buckets during backward (false: after backward)."),
      MH_OPTION(parallel, tp, "Tensor-parallel group size (ranks sharing each layer)."),
  };
  return table;
}

#undef MH_OPTION
#undef MH_CHOICE

const Option* find_option(std::string_view key) {
  for (const Option& o : options())
    if (o.key == key) return &o;
  return nullptr;
}

std::string_view leaf_of(std::string_view key) {
  return key.substr(key.find('.') + 1);
}

// ---- formatting --------------------------------------------------------------------------------

// Shortest text that reads back as the same double.
std::string format_double(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

std::string join(std::span<const std::string_view> names, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) out += sep;
    out += names[i];
  }
  return out;
}

// A plain YAML scalar needs no quotes if it is made of path-like characters and cannot be read as
// another type (bool, null, number).
bool needs_quotes(const std::string& s) {
  if (s.empty()) return true;
  for (char ch : s)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '/' ||
          ch == '-' || ch == '+'))
      return true;
  if (!std::isalpha(static_cast<unsigned char>(s[0])) && s[0] != '_' && s[0] != '/' && s[0] != '.')
    return true;
  std::string lower;
  for (char ch : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (const char* special :
       {"true", "false", "yes", "no", "on", "off", "y", "n", "null", ".inf", ".nan"})
    if (lower == special) return true;
  return false;
}

std::string yaml_quote(const std::string& s) {
  if (!needs_quotes(s)) return s;
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

// The value of an option as YAML text.
std::string value_text(const Option& o, Config& c) {
  return std::visit(
      [](auto* p) -> std::string {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, uint64_t>)
          return std::to_string(*p);
        else if constexpr (std::is_same_v<T, double>)
          return format_double(*p);
        else if constexpr (std::is_same_v<T, bool>)
          return *p ? "true" : "false";
        else if constexpr (std::is_same_v<T, std::string>)
          return yaml_quote(*p);
        else
          return std::string(enum_names<T>()[static_cast<size_t>(*p)]);
      },
      o.field(c));
}

// What an option accepts, as a short type name for the key reference.
std::string type_name(const Option& o) {
  Config probe;
  return std::visit(
      [&](auto* p) -> std::string {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, int64_t>)
          return "int";
        else if constexpr (std::is_same_v<T, uint64_t>)
          return "uint";
        else if constexpr (std::is_same_v<T, double>)
          return "float";
        else if constexpr (std::is_same_v<T, bool>)
          return "bool";
        else if constexpr (std::is_same_v<T, std::string>)
          return o.choices.empty() ? "string" : join(o.choices, "|");
        else
          return join(enum_names<T>(), "|");
      },
      o.field(probe));
}

// ---- parsing one value -------------------------------------------------------------------------

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "'" + n.Scalar() + "'";
  }
}

template <typename T>
bool parse_integer(std::string_view s, T& out) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  return res.ec == std::errc() && res.ptr == s.data() + s.size() && !s.empty();
}

bool parse_number(std::string_view s, double& out) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  return res.ec == std::errc() && res.ptr == s.data() + s.size() && !s.empty() &&
         std::isfinite(out);
}

// Stores `value` into the option's field. Returns "" on success, else what was wrong.
std::string assign(const Option& o, Config& c, const YAML::Node& value) {
  const bool scalar = value.IsScalar();
  const std::string text = scalar ? value.Scalar() : std::string();
  return std::visit(
      [&](auto* p) -> std::string {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          if (scalar && parse_integer(text, *p)) return "";
          return "expected an integer, got " + describe(value);
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          if (scalar && parse_integer(text, *p)) return "";
          return "expected a non-negative integer, got " + describe(value);
        } else if constexpr (std::is_same_v<T, double>) {
          if (scalar && parse_number(text, *p)) return "";
          return "expected a number, got " + describe(value);
        } else if constexpr (std::is_same_v<T, bool>) {
          if (scalar && (text == "true" || text == "false")) {
            *p = text == "true";
            return "";
          }
          return "expected true or false, got " + describe(value);
        } else if constexpr (std::is_same_v<T, std::string>) {
          if (value.IsNull()) {  // `key:` with nothing after it: the empty string
            if (o.choices.empty()) {
              p->clear();
              return "";
            }
          } else if (scalar && (o.choices.empty() || std::find(o.choices.begin(), o.choices.end(),
                                                               text) != o.choices.end())) {
            *p = text;
            return "";
          }
          if (o.choices.empty()) return "expected a string, got " + describe(value);
          return "expected one of " + join(o.choices, "|") + ", got " + describe(value);
        } else {
          auto names = enum_names<T>();
          for (size_t i = 0; i < names.size(); ++i)
            if (scalar && names[i] == text) {
              *p = static_cast<T>(i);
              return "";
            }
          return "expected one of " + join(names, "|") + ", got " + describe(value);
        }
      },
      o.field(c));
}

bool is_string_option(const Option& o) {
  Config probe;
  return std::holds_alternative<std::string*>(o.field(probe));
}

// ---- suggestions -------------------------------------------------------------------------------

// Edit distance counting an adjacent transposition as one edit ("d_modle" -> "d_model": 1).
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// The closest option key to an unknown dotted key, or "". A key whose last part names an option of
// another section, or is a prefix of / extends an option's name, also counts as close.
std::string suggest_key(std::string_view key) {
  std::string_view leaf = leaf_of(key);
  std::string best;
  size_t best_d = std::max<size_t>(2, leaf.size() / 3) + 1;
  for (const Option& o : options()) {
    std::string_view ol = leaf_of(o.key);
    size_t d = edit_distance(key, o.key);
    if (ol == leaf) d = std::min<size_t>(d, 1);
    if (leaf.size() >= 4 && ol.size() >= 4 && (ol.starts_with(leaf) || leaf.starts_with(ol)))
      d = std::min<size_t>(d, 2);
    if (d < best_d) {
      best_d = d;
      best = std::string(o.key);
    }
  }
  return best;
}

std::string did_you_mean(const std::string& suggestion) {
  return suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)";
}

// ---- loading -----------------------------------------------------------------------------------

// Builds a Config from defaults, one YAML document and overrides, remembering where each key was
// last set so a validation error can point there.
class Loader {
 public:
  explicit Loader(std::string name) : name_(std::move(name)) {}

  void apply_yaml(const std::string& text) {
    YAML::Node root;
    try {
      root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      if (e.mark.is_null()) user_error(name_, ": ", e.msg);
      user_error(name_, ":", e.mark.line + 1, ": ", e.msg);
    }
    if (root.IsNull()) return;  // an empty file: all defaults
    if (!root.IsMap())
      user_error(at(root), "expected a mapping with sections ", join(kSections, ", "), ", got ",
                 describe(root));
    std::map<std::string, int> seen;  // key -> line where first set
    for (const auto& kv : root) {
      const YAML::Node& sec_key = kv.first;
      const YAML::Node& section = kv.second;
      const std::string sec = sec_key.Scalar();
      if (std::find(std::begin(kSections), std::end(kSections), sec) == std::end(kSections)) {
        if (find_option(sec))
          user_error(at(sec_key), "unknown key '", sec, "' (write it as '", leaf_of(sec),
                     "' nested under '", sec.substr(0, sec.find('.')), ":')");
        std::string hint;
        size_t best_d = 3;
        for (std::string_view s : kSections)
          if (size_t d = edit_distance(sec, s); d < best_d) best_d = d, hint = std::string(s);
        user_error(
            at(sec_key), "unknown key '", sec, "'",
            hint.empty() ? " (sections are " + join(kSections, ", ") + ")" : did_you_mean(hint));
      }
      note_first(seen, sec, sec_key);
      if (section.IsNull()) continue;  // `train:` with nothing under it
      if (!section.IsMap())
        user_error(at(section), "section '", sec, "' must be a mapping of key: value, got ",
                   describe(section));
      for (const auto& entry : section) {
        const std::string key = sec + "." + entry.first.Scalar();
        const Option* o = find_option(key);
        if (!o)
          user_error(at(entry.first), "unknown key '", key, "'", did_you_mean(suggest_key(key)));
        note_first(seen, key, entry.first);
        if (std::string err = assign(*o, cfg_, entry.second); !err.empty())
          user_error(at(entry.second), key, ": ", err);
        set_origin(o->key, line_of(entry.second));
      }
    }
  }

  void apply_override(const std::string& item) {
    const std::string what = "--set " + item;
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) user_error(what, ": expected key=value");
    const std::string key = item.substr(0, eq);
    const std::string raw = item.substr(eq + 1);
    const Option* o = find_option(key);
    if (!o) user_error(what, ": unknown key '", key, "'", did_you_mean(suggest_key(key)));
    YAML::Node value;
    if (is_string_option(*o) && !raw.empty()) {
      value = YAML::Node(raw);  // paths and names verbatim: no YAML quoting or comments
    } else {
      try {
        value = YAML::Load(raw);
      } catch (const YAML::Exception&) {
        value = YAML::Node(raw);  // not YAML: reported by the type check below
      }
    }
    if (std::string err = assign(*o, cfg_, value); !err.empty()) user_error(what, ": ", err);
    set_origin(o->key, what);
  }

  Config finish() {
    validate();
    cfg_.source = name_;
    return cfg_;
  }

 private:
  std::string line_of(const YAML::Node& n) const {
    if (n.Mark().is_null()) return name_;
    return str(name_, ":", n.Mark().line + 1);
  }
  std::string at(const YAML::Node& n) const { return line_of(n) + ": "; }

  void note_first(std::map<std::string, int>& seen, const std::string& key, const YAML::Node& n) {
    const int line = n.Mark().is_null() ? 0 : n.Mark().line + 1;
    auto [it, inserted] = seen.emplace(key, line);
    if (!inserted)
      user_error(at(n), "duplicate key '", key, "' (first set at line ", it->second, ")");
  }

  struct Origin {
    int order = 0;     // when it was set: later YAML keys and --set overrides count higher
    std::string text;  // "file:line" or "--set key=value"
  };
  void set_origin(std::string_view key, std::string text) {
    where_[std::string(key)] = Origin{++set_count_, std::move(text)};
  }

  // Where a rule over `keys` was broken: the one set last ("file:line" or "--set key=value"), or
  // the config's name when all have their defaults.
  std::string origin(std::initializer_list<std::string_view> keys) const {
    const Origin* last = nullptr;
    for (std::string_view k : keys)
      if (auto it = where_.find(k); it != where_.end() && (!last || it->second.order > last->order))
        last = &it->second;
    return last ? last->text : name_;
  }

  // Throws "<origin>: <message>", blaming the last-set key of `keys`.
  template <typename... Args>
  [[noreturn]] void invalid(std::initializer_list<std::string_view> keys,
                            const Args&... args) const {
    user_error(origin(keys), ": ", args...);
  }

  void at_least(std::string_view key, int64_t v, int64_t lo) const {
    if (v < lo) invalid({key}, key, " (", v, ") must be >= ", lo);
  }
  void positive(std::string_view key, double v) const {
    if (!(v > 0)) invalid({key}, key, " (", format_double(v), ") must be > 0");
  }
  void non_negative(std::string_view key, double v) const {
    if (!(v >= 0)) invalid({key}, key, " (", format_double(v), ") must be >= 0");
  }
  void unit_interval(std::string_view key, double v) const {
    if (!(v >= 0 && v < 1)) invalid({key}, key, " (", format_double(v), ") must be in [0, 1)");
  }
  void token_id(std::string_view key, int64_t id) const {
    if (id < 0 || id >= cfg_.model.vocab_size)
      invalid({key, "model.vocab_size"}, key, " (", id, ") must be in [0, model.vocab_size) = [0, ",
              cfg_.model.vocab_size, ")");
  }
  void divisible(std::string_view key, int64_t v, std::string_view by_key, int64_t by) const {
    if (v % by != 0)
      invalid({key, by_key}, key, " (", v, ") must be divisible by ", by_key, " (", by, ")");
  }

  void validate() const {
    const ModelConfig& m = cfg_.model;
    at_least("model.vocab_size", m.vocab_size, 1);
    at_least("model.d_model", m.d_model, 1);
    at_least("model.heads", m.heads, 1);
    divisible("model.d_model", m.d_model, "model.heads", m.heads);
    at_least("model.d_ff", m.d_ff, 1);
    at_least("model.encoder_layers", m.encoder_layers, 1);
    at_least("model.decoder_layers", m.decoder_layers, 1);
    unit_interval("model.dropout", m.dropout);
    unit_interval("model.attention_dropout", m.attention_dropout);
    positive("model.norm_eps", m.norm_eps);
    at_least("model.max_len", m.max_len, 2);

    const DataConfig& d = cfg_.data;
    token_id("model.pad_id", m.pad_id);
    token_id("data.bos_id", d.bos_id);
    token_id("data.eos_id", d.eos_id);
    if (d.bos_id == m.pad_id)
      invalid({"data.bos_id", "model.pad_id"}, "data.bos_id (", d.bos_id,
              ") must differ from model.pad_id (", m.pad_id, ")");
    if (d.eos_id == m.pad_id)
      invalid({"data.eos_id", "model.pad_id"}, "data.eos_id (", d.eos_id,
              ") must differ from model.pad_id (", m.pad_id, ")");
    if (d.eos_id == d.bos_id)
      invalid({"data.eos_id", "data.bos_id"}, "data.eos_id (", d.eos_id,
              ") must differ from data.bos_id (", d.bos_id, ")");
    at_least("data.batch_size", d.batch_size, 1);
    if (d.task == "pairs") {
      if (d.train_pairs.empty())
        invalid({"data.train_pairs", "data.task"},
                "data.train_pairs must name a file when data.task is pairs (one 'source ids TAB "
                "target ids' line per sentence pair)");
    } else {  // synthetic tasks: sequences plus BOS/EOS must fit the positional table
      at_least("data.toy_min_len", d.toy_min_len, 1);
      if (d.toy_max_len < d.toy_min_len)
        invalid({"data.toy_max_len", "data.toy_min_len"}, "data.toy_max_len (", d.toy_max_len,
                ") must be >= data.toy_min_len (", d.toy_min_len, ")");
      if (d.toy_max_len + 2 > m.max_len)
        invalid({"data.toy_max_len", "model.max_len"}, "data.toy_max_len (", d.toy_max_len,
                ") + 2 (BOS/EOS) must be <= model.max_len (", m.max_len, ")");
      at_least("data.toy_symbols", d.toy_symbols, 2);
      at_least("data.toy_valid_size", d.toy_valid_size, 0);
    }

    const TrainConfig& t = cfg_.train;
    at_least("train.steps", t.steps, 0);
    at_least("train.tokens_per_step", t.tokens_per_step, 0);
    positive("train.lr_scale", t.lr_scale);
    at_least("train.warmup", t.warmup, 1);
    unit_interval("train.label_smoothing", t.label_smoothing);
    non_negative("train.clip_norm", t.clip_norm);
    unit_interval("train.adam_beta1", t.adam_beta1);
    unit_interval("train.adam_beta2", t.adam_beta2);
    positive("train.adam_eps", t.adam_eps);
    non_negative("train.weight_decay", t.weight_decay);
    at_least("train.log_every", t.log_every, 1);
    at_least("train.eval_every", t.eval_every, 0);
    at_least("train.threads", t.threads, 0);
    positive("train.loss_scale", t.loss_scale);
    at_least("train.loss_scale_window", t.loss_scale_window, 1);
    if (t.device == "cpu" && t.precision != Precision::fp32)
      invalid({"train.precision", "train.device"},
              str("train.precision ", name_of(t.precision),
                  " needs train.device cuda (the CPU backend computes in fp32)"));
    if (t.out_dir.empty()) invalid({"train.out_dir"}, "train.out_dir must not be empty");

    const ParallelConfig& p = cfg_.parallel;
    positive("parallel.bucket_mb", p.bucket_mb);
    at_least("parallel.tp", p.tp, 1);
    divisible("model.heads", m.heads, "parallel.tp", p.tp);
    divisible("model.d_ff", m.d_ff, "parallel.tp", p.tp);
  }

  std::string name_;
  Config cfg_;
  std::map<std::string, Origin, std::less<>> where_;
  int set_count_ = 0;
};

}  // namespace

Config load_config_text(const std::string& yaml_text, const std::string& name,
                        const std::vector<std::string>& overrides) {
  Loader loader(name);
  loader.apply_yaml(yaml_text);
  for (const std::string& item : overrides) loader.apply_override(item);
  return loader.finish();
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) user_error(path, ": cannot read file (", std::strerror(errno), ")");
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f);
  const int err = errno;
  std::fclose(f);
  if (failed) user_error(path, ": cannot read file (", std::strerror(err), ")");
  return load_config_text(text, path, overrides);
}

std::string config_to_yaml(const Config& c) {
  Config copy = c;  // FieldRef hands out mutable pointers; read through a copy
  std::string out;
  if (!c.source.empty()) {
    std::string src = c.source;
    std::replace(src.begin(), src.end(), '\n', ' ');
    out += "# Effective config (from " + src + ", defaults filled in).\n";
  }
  std::string_view section;
  for (const Option& o : options()) {
    std::string_view sec = o.key.substr(0, o.key.find('.'));
    if (sec != section) {
      out += std::string(sec) + ":\n";
      section = sec;
    }
    out += "  " + std::string(leaf_of(o.key)) + ": " + value_text(o, copy) + "\n";
  }
  return out;
}

std::string config_help() {
  Config defaults;
  std::string out =
      "Config keys (YAML: section, then key; command line: --set section.key=value).\n"
      "Precedence: default < --config file < --set.\n";
  std::string_view section;
  for (const Option& o : options()) {
    std::string_view sec = o.key.substr(0, o.key.find('.'));
    if (sec != section) {
      out += "\n" + std::string(sec) + ":\n";
      section = sec;
    }
    out += "  " + std::string(o.key) + " (" + type_name(o) + ", default " +
           value_text(o, defaults) + ")\n      " + std::string(o.help) + "\n";
  }
  return out;
}

std::string_view name_of(NormPlacement v) {
  return kNormNames[static_cast<size_t>(v)];
}
std::string_view name_of(Activation v) {
  return kActivationNames[static_cast<size_t>(v)];
}
std::string_view name_of(Precision v) {
  return kPrecisionNames[static_cast<size_t>(v)];
}
std::string_view name_of(AttnImpl v) {
  return kAttnImplNames[static_cast<size_t>(v)];
}

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const std::string& c : candidates)
    if (size_t d = edit_distance(word, c); d < best_d) best_d = d, best = c;
  return best;
}

}  // namespace mh
