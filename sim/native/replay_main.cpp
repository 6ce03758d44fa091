// Native replay harness: streams Ethernet frames into the feed port of the Verilated market-data
// path (tickwire.hdl.market_data.MarketDataTop) and writes every decoded record it emits.
//
// Built and driven by tickwire/sim/replay.py; no Python runs per cycle. The top level is
// replay_top, which replay.py generates: the DUT with every input the harness drives registered
// once (so the logic behind the inputs is evaluated once per cycle, not on both clock edges), the
// inputs it does not drive tied off (other feed lines idle, the injection port empty).
//
// Files ("-" for FRAMES means stdin, for RECORDS stdout):
//
//   FRAMES     "TWFRAMES" then, per frame, u32 little-endian length + the frame bytes, FCS included
//   REGISTERS  text, one command a line: "w ADDR VALUE" (written after reset, in order) or
//              "r ADDR" (read after the feed has drained, in order); numbers in decimal or 0x hex
//   RECORDS    "TWRECORD" + u32 record_bytes, then one record per o_records transfer: the payload
//              bits as little-endian 32-bit words (Verilator's own order), record_bytes each
//   SUMMARY    text, "key value" lines (cycles, frames, bytes, records, record_bytes, seconds,
//              cpu_seconds), then "r ADDR VALUE" per register read
//
// XGMII: every frame starts in lane 0 (/S/, 6 x 0x55, SFD 0xD5), then the frame, /T/, and idles
// until at least GAP characters (the /T/ counted) have passed and the next lane 0. The run ends
// DRAIN cycles after the last record once the last frame has been sent.

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "verilated.h"
#include "Vdut.h"

// Verilator spells the "__" of the Amaranth port names as "___05F".
#define FEED_DATA feed_rx___05Fdata
#define FEED_CTRL feed_rx___05Fctrl
#define CSR_ADDR csr___05Faddr
#define CSR_W_STB csr___05Fw_stb
#define CSR_W_DATA csr___05Fw_data
#define CSR_R_STB csr___05Fr_stb
#define CSR_R_DATA csr___05Fr_data
#define RECORD_VALID o_records___05Fvalid
#define RECORD_READY o_records___05Fready
#define RECORD_PAYLOAD o_records___05Fpayload

namespace {

constexpr uint8_t XGMII_IDLE = 0x07;
constexpr uint8_t XGMII_START = 0xFB;
constexpr uint8_t XGMII_TERMINATE = 0xFD;
constexpr uint8_t PREAMBLE = 0x55;
constexpr uint8_t SFD = 0xD5;
constexpr uint64_t IDLE_WORD = 0x0707070707070707ULL;

[[noreturn]] void die(const std::string& message) {
    std::fprintf(stderr, "replay: error: %s\n", message.c_str());
    std::exit(2);
}

uint64_t parse_number(const char* text, const char* what) {
    errno = 0;
    char* end = nullptr;
    unsigned long long v = std::strtoull(text, &end, 0);
    if (errno || end == text || *end) die(std::string("bad ") + what + ": " + text);
    return v;
}

struct Options {
    std::string frames, registers, records, summary;
    uint64_t gap = 12;             // XGMII characters from /T/ (included) to the next /S/, at least
    uint64_t drain_cycles = 4096;  // cycles without a record that end the run after the last frame
};

Options parse_options(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&](const char* name) -> const char* {
            if (i + 1 >= argc) die(std::string(name) + " needs a value");
            return argv[++i];
        };
        if (a == "--frames") o.frames = value("--frames");
        else if (a == "--registers") o.registers = value("--registers");
        else if (a == "--records") o.records = value("--records");
        else if (a == "--summary") o.summary = value("--summary");
        else if (a == "--gap") o.gap = parse_number(value("--gap"), "--gap");
        else if (a == "--drain-cycles") o.drain_cycles = parse_number(value("--drain-cycles"), "--drain-cycles");
        else die("unknown argument " + a);
    }
    if (o.frames.empty() || o.registers.empty() || o.records.empty() || o.summary.empty())
        die("usage: replay --frames F|- --registers R --records OUT|- --summary OUT [--gap N] "
            "[--drain-cycles N]");
    if (o.gap < 1) die("--gap must be at least 1 (the /T/ character)");
    return o;
}

struct Command {
    bool write;
    uint32_t addr;
    uint32_t value;
};

std::vector<Command> read_registers(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "r");
    if (!f) die("cannot open " + path + ": " + std::strerror(errno));
    std::vector<Command> out;
    char line[256];
    int number = 0;
    while (std::fgets(line, sizeof line, f)) {
        ++number;
        char op[8], a[64], v[64];
        int n = std::sscanf(line, "%7s %63s %63s", op, a, v);
        if (n <= 0 || op[0] == '#') continue;
        if (std::strcmp(op, "w") == 0 && n == 3)
            out.push_back({true, uint32_t(parse_number(a, "address")), uint32_t(parse_number(v, "value"))});
        else if (std::strcmp(op, "r") == 0 && n == 2)
            out.push_back({false, uint32_t(parse_number(a, "address")), 0});
        else die(path + ":" + std::to_string(number) + ": expected 'w ADDR VALUE' or 'r ADDR'");
    }
    std::fclose(f);
    return out;
}

std::FILE* open_stream(const std::string& path, bool write) {
    std::FILE* f = path == "-" ? (write ? stdout : stdin) : std::fopen(path.c_str(), write ? "wb" : "rb");
    if (!f) die("cannot open " + path + ": " + std::strerror(errno));
    std::setvbuf(f, nullptr, _IOFBF, 1 << 20);
    return f;
}

class Harness {
public:
    explicit Harness(const Options& o) : opt(o), ctx(new VerilatedContext), top(new Vdut{ctx.get()}) {
        records = open_stream(opt.records, true);
        // The payload's storage: VlWide (32-bit words, least significant first) or a plain
        // integer, written as it sits in memory (little-endian hosts: x86-64, AArch64).
        const uint32_t size = sizeof(top->RECORD_PAYLOAD);
        std::fwrite("TWRECORD", 1, 8, records);
        std::fwrite(&size, 4, 1, records);
        top->clk = 0;
        top->rst = 1;
        top->RECORD_READY = 1;
        top->FEED_DATA = IDLE_WORD;
        top->FEED_CTRL = 0xFF;
        top->CSR_W_STB = 0;
        top->CSR_R_STB = 0;
        top->eval();
    }

    ~Harness() { top->final(); }

    // One clock cycle with the inputs as they are; o_records is sampled before the rising edge.
    inline void tick() {
        top->clk = 0;
        top->eval();
        if (top->RECORD_VALID) {
            std::fwrite(&top->RECORD_PAYLOAD, sizeof(top->RECORD_PAYLOAD), 1, records);
            ++record_count;
            quiet = 0;
        } else {
            ++quiet;
        }
        top->clk = 1;
        top->eval();
        ++cycles;
    }

    void reset() {
        top->rst = 1;
        for (int i = 0; i < 8; ++i) tick();
        top->rst = 0;
        for (int i = 0; i < 8; ++i) tick();
    }

    void csr_write(uint32_t addr, uint32_t value) {
        top->CSR_ADDR = addr;
        top->CSR_W_DATA = value;
        top->CSR_W_STB = 1;
        tick();
        top->CSR_W_STB = 0;
    }

    // Inputs are registered once: r_stb reaches the bank a cycle after it is driven, and r_data
    // holds the word from the cycle after that.
    uint32_t csr_read(uint32_t addr) {
        top->CSR_ADDR = addr;
        top->CSR_R_STB = 1;
        tick();
        top->CSR_R_STB = 0;
        tick();
        return top->CSR_R_DATA;
    }

    inline void drive(uint64_t data, uint8_t ctrl) {
        top->FEED_DATA = data;
        top->FEED_CTRL = ctrl;
        tick();
    }

    // One frame (FCS included) on XGMII, followed by the gap.
    void send_frame(const uint8_t* frame, size_t length) {
        lanes.clear();
        ctrls.clear();
        auto put = [&](uint8_t byte, bool ctrl) { lanes.push_back(byte); ctrls.push_back(ctrl); };
        put(XGMII_START, true);
        for (int i = 0; i < 6; ++i) put(PREAMBLE, false);
        put(SFD, false);
        for (size_t i = 0; i < length; ++i) put(frame[i], false);
        put(XGMII_TERMINATE, true);
        for (uint64_t g = 1; g < opt.gap; ++g) put(XGMII_IDLE, true);
        while (lanes.size() % 8) put(XGMII_IDLE, true);
        for (size_t w = 0; w < lanes.size(); w += 8) {
            uint64_t data = 0;
            uint8_t ctrl = 0;
            for (int k = 0; k < 8; ++k) {
                data |= uint64_t(lanes[w + k]) << (8 * k);
                ctrl |= uint8_t(ctrls[w + k]) << k;
            }
            drive(data, ctrl);
        }
        ++frames;
        bytes += length;
    }

    void idle_until_drained() {
        top->FEED_DATA = IDLE_WORD;
        top->FEED_CTRL = 0xFF;
        quiet = 0;
        while (quiet < opt.drain_cycles) tick();
    }

    const Options& opt;
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vdut> top;
    std::FILE* records = nullptr;
    std::vector<uint8_t> lanes, ctrls;
    uint64_t cycles = 0, frames = 0, bytes = 0, record_count = 0, quiet = 0;
};

}  // namespace

int main(int argc, char** argv) {
    const Options opt = parse_options(argc, argv);
    const std::vector<Command> commands = read_registers(opt.registers);

    std::FILE* in = open_stream(opt.frames, false);
    char magic[8];
    if (std::fread(magic, 1, 8, in) != 8 || std::memcmp(magic, "TWFRAMES", 8) != 0)
        die(opt.frames + ": not a frames file (no TWFRAMES magic)");

    auto start = std::chrono::steady_clock::now();
    Harness h(opt);
    h.reset();
    for (const Command& c : commands)
        if (c.write) h.csr_write(c.addr, c.value);
    for (int i = 0; i < 16; ++i) h.drive(IDLE_WORD, 0xFF);

    std::vector<uint8_t> frame;
    for (;;) {
        uint32_t length;
        size_t n = std::fread(&length, 1, 4, in);
        if (n == 0) break;
        if (n != 4) die(opt.frames + ": truncated length of frame " + std::to_string(h.frames));
        frame.resize(length);
        if (std::fread(frame.data(), 1, length, in) != length)
            die(opt.frames + ": frame " + std::to_string(h.frames) + " truncated");
        h.send_frame(frame.data(), length);
    }
    if (in != stdin) std::fclose(in);
    h.idle_until_drained();
    const uint64_t feed_cycles = h.cycles;

    std::vector<std::pair<uint32_t, uint32_t>> reads;
    for (const Command& c : commands)
        if (!c.write) reads.emplace_back(c.addr, h.csr_read(c.addr));
    if (std::fflush(h.records) != 0) die("cannot write " + opt.records + ": " + std::strerror(errno));

    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double cpu_seconds = double(std::clock()) / CLOCKS_PER_SEC;
    std::FILE* summary = std::fopen(opt.summary.c_str(), "w");
    if (!summary) die("cannot write " + opt.summary + ": " + std::strerror(errno));
    std::fprintf(summary, "cycles %llu\nframes %llu\nbytes %llu\nrecords %llu\nrecord_bytes %zu\n"
                 "seconds %.6f\ncpu_seconds %.6f\n",
                 (unsigned long long)feed_cycles, (unsigned long long)h.frames,
                 (unsigned long long)h.bytes, (unsigned long long)h.record_count,
                 sizeof(h.top->RECORD_PAYLOAD), seconds, cpu_seconds);
    for (auto& r : reads) std::fprintf(summary, "r %u %u\n", r.first, r.second);
    if (std::fclose(summary) != 0) die("cannot write " + opt.summary);
    return 0;
}
