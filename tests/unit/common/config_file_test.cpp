// common/config_file.h: a YAML file of a CLI11 app's options, applied after the command line.
#include "common/config_file.h"

#include <sstream>

#include <doctest/doctest.h>

using faultline::config::applyConfig;
using faultline::config::configKeys;

namespace {

// An app shaped like `faultline controller`: strings, a repeatable option, a flag, a checked one.
struct App {
  App() {
    app.add_option("--config", config)->configurable(false);
    app.add_option("--listen", listen);
    app.add_option("--db", db);
    app.add_option("--label", labels);
    app.add_flag("--insecure", insecure);
    app.add_option("--local-role", role)->check(CLI::IsMember({"viewer", "operator", "admin"}));
  }
  // Parses argv (without the program name), then applies text as the file "c.yaml".
  std::vector<std::string> run(std::vector<std::string> argv, const std::string& text) {
    argv.insert(argv.begin(), "test");
    std::vector<char*> args;
    for (auto& a : argv) {
      args.push_back(a.data());
    }
    app.parse(static_cast<int>(args.size()), args.data());
    std::vector<std::string> out;
    for (const auto& d : applyConfig(app, text, "c.yaml")) {
      out.push_back(format(d));
    }
    return out;
  }
  CLI::App app{"test"};
  std::string config;
  std::string listen = "127.0.0.1:7443";
  std::string db = "default.db";
  std::vector<std::string> labels;
  bool insecure = false;
  std::string role = "operator";
};

}  // namespace

TEST_CASE("config file: keys set the options, lists fill repeatable ones, flags take true or false") {
  App a;
  CHECK(a.run({},
              "# the controller\nlisten: 0.0.0.0:7443\ndb: /var/lib/faultline/controller.db\n"
              "label: [role=web, zone=a]\ninsecure: true\nlocal-role: viewer\n")
            .empty());
  CHECK(a.listen == "0.0.0.0:7443");
  CHECK(a.db == "/var/lib/faultline/controller.db");
  CHECK(a.labels == std::vector<std::string>{"role=web", "zone=a"});
  CHECK(a.insecure);
  CHECK(a.role == "viewer");

  App b;
  CHECK(b.run({}, "insecure: no\nlabel: one=1\n").empty());
  CHECK_FALSE(b.insecure);
  CHECK(b.labels == std::vector<std::string>{"one=1"});
}

TEST_CASE("config file: the command line overrides the file, the rest of the file still applies") {
  App a;
  CHECK(a.run({"--listen", "127.0.0.1:9000", "--label", "cli=1"}, "listen: 0.0.0.0:7443\ndb: f.db\nlabel: [file=1]\n")
            .empty());
  CHECK(a.listen == "127.0.0.1:9000");
  CHECK(a.labels == std::vector<std::string>{"cli=1"});
  CHECK(a.db == "f.db");
}

TEST_CASE("config file: an empty file or one of comments changes nothing") {
  App a;
  CHECK(a.run({}, "").empty());
  CHECK(a.run({}, "# nothing yet\n").empty());
  CHECK(a.listen == "127.0.0.1:7443");
  CHECK(a.db == "default.db");
}

TEST_CASE("config file: the keys are the configurable long options, never --config or --help") {
  App a;
  CHECK(configKeys(a.app) == std::vector<std::string>{"db", "insecure", "label", "listen", "local-role"});
}

TEST_CASE("config file: every problem is placed at FILE:LINE:COLUMN and names the key and what is accepted") {
  SUBCASE("an unknown key, with the list of keys") {
    App a;
    const auto errors = a.run({}, "db: a.db\nlisen: 1.2.3.4:5\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0] == "c.yaml:2:1: unknown key 'lisen'; accepted here: db, insecure, label, listen, local-role");
    CHECK(a.db == "a.db");  // the good key still applies
  }
  SUBCASE("the config option itself is no key") {
    App a;
    const auto errors = a.run({}, "config: other.yaml\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].rfind("c.yaml:1:1: unknown key 'config'; accepted here: ", 0) == 0);
  }
  SUBCASE("a list where one value goes") {
    App a;
    const auto errors = a.run({}, "listen:\n  - a:1\n  - b:2\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0] == "c.yaml:2:3: key 'listen': wrong type: got a list; accepted: one value");
    CHECK(a.listen == "127.0.0.1:7443");
  }
  SUBCASE("a map") {
    App a;
    const auto errors = a.run({}, "db: {path: x}\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0] == "c.yaml:1:5: key 'db': wrong type: got a map; accepted: one value");
  }
  SUBCASE("a flag that is not true or false") {
    App a;
    const auto errors = a.run({}, "insecure: maybe\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0] == "c.yaml:1:11: key 'insecure': wrong type: got the value 'maybe'; accepted: true or false");
    CHECK_FALSE(a.insecure);
  }
  SUBCASE("a value the option's own check refuses") {
    App a;
    const auto errors = a.run({}, "local-role: root\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].rfind("c.yaml:1:13: key 'local-role': 'root' refused: ", 0) == 0);
    CHECK(errors[0].find("viewer") != std::string::npos);
    CHECK(a.role == "operator");
  }
  SUBCASE("a key with no value") {
    App a;
    const auto errors = a.run({}, "db:\nlisten: x:1\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0] == "c.yaml:1:1: key 'db': has no value; accepted: one value");
  }
  SUBCASE("YAML that does not parse") {
    App a;
    const auto errors = a.run({}, "db: a.db\nlisten: [1.2.3.4:5\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].rfind("c.yaml:3:1: not YAML: ", 0) == 0);
  }
  SUBCASE("a root that is not a map") {
    App a;
    const auto errors = a.run({}, "- listen\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0] ==
          "c.yaml:1:1: wrong type: got a list; accepted: a map of option names (without dashes) to values");
  }
  SUBCASE("a key twice") {
    App a;
    const auto errors = a.run({}, "db: a\ndb: b\n");
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].rfind("c.yaml:2:1: ", 0) == 0);
    CHECK(errors[0].find("db") != std::string::npos);
  }
}

TEST_CASE("config file: YamlConfig is CLI11's formatter: from_config and to_config round-trip") {
  App a;
  a.run({"--listen", "1.2.3.4:5", "--label", "a=1", "--label", "b=2"}, "");
  faultline::config::YamlConfig yaml;
  const std::string text = yaml.to_config(&a.app, false, false, "");
  CHECK(text == "label:\n  - \"a=1\"\n  - \"b=2\"\nlisten: \"1.2.3.4:5\"\n");
  std::istringstream in(text);
  const auto items = yaml.from_config(in);
  REQUIRE(items.size() == 2);
  CHECK(items[0].name == "label");
  CHECK(items[0].inputs == std::vector<std::string>{"a=1", "b=2"});
  CHECK(items[1].inputs == std::vector<std::string>{"1.2.3.4:5"});
  std::istringstream bad("a: [1\n");
  CHECK_THROWS_AS(yaml.from_config(bad), CLI::ConfigError);
}

// YAML aliases repeat a value without its bytes in the file: 262 KB that expanded to 4 GB ran the
// agent, and its revert-all, out of memory (attacker trial, issue 16).
TEST_CASE("config file: aliases are counted expanded; a list over 1000 values or 1 MiB of values is refused") {
  std::string bomb = "label: [&a \"x=" + std::string(100'000, 'y') + "\"";
  for (int i = 0; i < 200; ++i) {
    bomb += ", *a";
  }
  bomb += "]\n";
  App a;
  const auto errors = a.run({}, bomb);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].find("more than 1048576 bytes with their aliases expanded") != std::string::npos);
  CHECK(a.labels.empty());
  std::string many = "label: [";
  for (int i = 0; i < 1001; ++i) {
    many += (i != 0 ? ", " : "") + std::string("k=v");
  }
  many += "]\n";
  App b;
  const auto tooMany = b.run({}, many);
  REQUIRE(tooMany.size() == 1);
  CHECK(tooMany[0].find("has 1001 values; accepted: at most 1000") != std::string::npos);
}
