#!/usr/bin/env bash
# Call setup: how many calls a second one `sipbridge serve` takes, and what
# each costs it, driven by sipp's built-in uac scenario on loopback.
#
#     bash benches/call_setup.sh [RATE [CALLS [HOLD_MS]]]
#     RATE=1000 CALLS=10000 HOLD_MS=500 bash benches/call_setup.sh
#
# Each call is sipp's `uac`: INVITE sip:ROOM@127.0.0.1 with a PCMU offer,
# 200 with the bridge's answer, ACK, HOLD_MS of call, BYE, 200. Every call
# joins room ROOM (created on demand) with a real RTP leg: an even/odd port
# pair bound from RTP_PORTS, a receive task and a seat in the mixer. sipp
# sends no RTP (the bridge's media timeout is off).
#
# It builds the release binary if needed (honouring CARGO_TARGET_DIR), starts
# `sipbridge serve` on a free loopback port, lets it idle for IDLE_S seconds
# (to measure its idle CPU), runs sipp at RATE calls a second for CALLS calls
# (at most LIMIT at once), waits for every leg to leave, and prints:
# - calls attempted, successful and failed (with sipp's failure reasons and
#   retransmissions), the rate achieved (calls created over the time it took
#   to create them) and how long the 200 took (sipp's response-time buckets);
# - the server's legs: joined, left, and those the caller's BYE did not end
#   (still in the room after WAIT_S, or ended by the server's own timeout),
#   and SIP datagrams the kernel dropped at the server's and sipp's full
#   receive buffers (/proc/net/udp);
# - the server's CPU (utime + stime of /proc/PID/stat) from just before the
#   first call to the last leg's departure, per call, with the idle share and
#   the split by thread (SIP/IO, mixer, other);
# - VmRSS before, at its peak (sampled every SAMPLE_MS) and after, and the
#   peak growth per concurrent call (sipp's "Peak was N calls") and per call;
# - sipp's own CPU: on a 2-core machine the generator competes with the
#   server, and its share tells whether it is the limit.
#
# Environment (defaults in brackets): RATE [1500], CALLS [15000], HOLD_MS
# [500], LIMIT [2000] (sipp -l), ROOM [bench], RTP_PORTS [20000-39999],
# MIXER_THREADS [0: one per core], IDLE_S [2], SAMPLE_MS [200], WAIT_S [15]
# (how long to wait, after sipp ends, for the server's legs to leave),
# OUT [$CARGO_TARGET_DIR/call_setup] (sipp's CSV and error log, serve's
# output), PERF_S [0] (when set, `perf record -g` the server for that many
# seconds from 2 s into the run, into $OUT/perf.data), PERF_OPTS [-g] (e.g.
# "--call-graph dwarf -F 499": Rust's release code keeps no frame pointers),
# SIPP_EXTRA (more sipp options, e.g. "-trace_msg"), SERVE_EXTRA (more serve
# options, e.g. "--sample-rate 8000").
set -euo pipefail

RATE=${1:-${RATE:-1500}}
CALLS=${2:-${CALLS:-15000}}
HOLD_MS=${3:-${HOLD_MS:-500}}
LIMIT=${LIMIT:-2000}
ROOM=${ROOM:-bench}
RTP_PORTS=${RTP_PORTS:-20000-39999}
MIXER_THREADS=${MIXER_THREADS:-0}
IDLE_S=${IDLE_S:-2}
SAMPLE_MS=${SAMPLE_MS:-200}
PERF_S=${PERF_S:-0}
WAIT_S=${WAIT_S:-15}
PERF_OPTS=${PERF_OPTS:--g}
SIPP_EXTRA=${SIPP_EXTRA:-}
SERVE_EXTRA=${SERVE_EXTRA:-}

die() { echo "call_setup: $*" >&2; exit 1; }
for n in RATE CALLS HOLD_MS LIMIT IDLE_S SAMPLE_MS PERF_S WAIT_S; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number, not '${!n}'"
done
((RATE > 0 && CALLS > 0)) || die "RATE and CALLS must be positive"

command -v sipp >/dev/null || die "sipp is not installed (apt-get install sip-tester); it generates the calls"
command -v python3 >/dev/null || die "python3 is needed to pick a free port and summarise sipp's statistics"
if ((PERF_S > 0)); then command -v perf >/dev/null || die "PERF_S is set but perf is not installed"; fi

cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release/sipbridge
OUT=${OUT:-$TARGET_DIR/call_setup}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Build if the binary is missing or older than any source file.
if [[ ! -x $BIN ]] || [[ -n $(find src Cargo.toml Cargo.lock -newer "$BIN" -print -quit) ]]; then
    echo "call_setup: building $BIN" >&2
    cargo build --release --bin sipbridge >&2 || die "cargo build failed"
fi

# File descriptors: the server holds three sockets per active call (RTP,
# RTCP and a second handle on the RTP socket), and under overload calls sipp
# gave up on stay until the server's own timeout: take the hard limit.
want_fd=$((LIMIT * 3 + 1024))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < want_fd)); then
    echo "call_setup: warning: the hard limit on open files ($hard) is below the $want_fd that LIMIT=$LIMIT calls need" >&2
fi
if [[ $hard == unlimited ]]; then ulimit -n "$((want_fd * 2))"; else ulimit -n "$hard"; fi

CLK_TCK=$(getconf CLK_TCK)
PAGE_KB=$(($(getconf PAGESIZE) / 1024))

# utime + stime in clock ticks, of a process (all threads, live and exited).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Per thread name (digits dropped): "name ticks" lines.
thread_ticks() {
    for s in /proc/"$1"/task/*/stat; do
        cat "$s" 2>/dev/null || true
    done | awk '{ match($0, /\(.*\)/); name = substr($0, RSTART + 1, RLENGTH - 2); sub(/-?[0-9]+$/, "", name);
                  rest = substr($0, RSTART + RLENGTH + 1); split(rest, f, " "); t[name] += f[12] + f[13] }
                END { for (n in t) print n, t[n] }'
}

# Datagrams the kernel dropped at the UDP socket bound to 127.0.0.1:PORT (its
# receive buffer was full): the last column of /proc/net/udp.
udp_drops() {
    awk -v addr="$(printf '0100007F:%04X' "$1")" '$2 == addr { print $NF; found = 1; exit } END { if (!found) print 0 }' /proc/net/udp
}

SERVER_PID='' SIPP_PID='' SAMPLER_PID='' PERF_PID=''
cleanup() {
    # sipp runs under /usr/bin/time: end sipp (time's child) and time itself.
    if [[ -n $SIPP_PID ]]; then
        pkill -TERM -P "$SIPP_PID" 2>/dev/null || true
        for _ in $(seq 20); do pgrep -P "$SIPP_PID" >/dev/null || break; sleep 0.1; done
        pkill -KILL -P "$SIPP_PID" 2>/dev/null || true
    fi
    for pid in $PERF_PID $SAMPLER_PID $SIPP_PID; do kill "$pid" 2>/dev/null || true; done
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
SIPP_PORT=$(free_port)
rm -f "$OUT"/serve.out "$OUT"/serve.err "$OUT"/rss.txt "$OUT"/stats.csv "$OUT"/errors.log "$OUT"/screen.log "$OUT"/sipp.time "$OUT"/sipp.out

# shellcheck disable=SC2086
"$BIN" serve --listen "127.0.0.1:$PORT" --rtp-ports "$RTP_PORTS" --mixer-threads "$MIXER_THREADS" \
    --media-timeout 0 $SERVE_EXTRA >"$OUT/serve.out" 2>"$OUT/serve.err" &
SERVER_PID=$!
for _ in $(seq 100); do
    grep -q '^sipbridge listening' "$OUT/serve.out" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "sipbridge serve exited: $(cat "$OUT/serve.err")"
    sleep 0.1
done
grep -q '^sipbridge listening' "$OUT/serve.out" || die "sipbridge serve did not start listening on 127.0.0.1:$PORT"

# Idle cost, then the baseline.
idle0=$(cpu_ticks "$SERVER_PID"); sleep "$IDLE_S"; idle1=$(cpu_ticks "$SERVER_PID")
rss0=$(rss_kib "$SERVER_PID")
cpu0=$(cpu_ticks "$SERVER_PID")
threads0=$(thread_ticks "$SERVER_PID")
t0=$(date +%s.%N)

# VmRSS every SAMPLE_MS while the server lives.
(
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        echo "$(date +%s.%N) $(rss_kib "$SERVER_PID") $(udp_drops "$SIPP_PORT")"
        sleep "$(awk "BEGIN { print $SAMPLE_MS / 1000 }")"
    done
) >"$OUT/rss.txt" &
SAMPLER_PID=$!

if ((PERF_S > 0)); then
    # shellcheck disable=SC2086
    (sleep 2; exec perf record $PERF_OPTS -o "$OUT/perf.data" -p "$SERVER_PID" -- sleep "$PERF_S") >"$OUT/perf.log" 2>&1 &
    PERF_PID=$!
fi

# sipp: the scenario's own pacing (-r per -rp ms), CALLS calls, HOLD_MS each,
# at most LIMIT at once; statistics every second; quits with an error if the
# run takes far longer than planned.
timeout_s=$((CALLS / RATE + HOLD_MS / 1000 + 90))
sipp_cmd=(sipp -sn uac "127.0.0.1:$PORT" -s "$ROOM" -i 127.0.0.1 -p "$SIPP_PORT" -r "$RATE" -rp 1000 -m "$CALLS"
    -d "$HOLD_MS" -l "$LIMIT" -nostdin -max_socket "$((LIMIT + 100))"
    -trace_stat -stf "$OUT/stats.csv" -fd 1 -trace_err -error_file "$OUT/errors.log"
    -trace_screen -screen_file "$OUT/screen.log" -timeout "${timeout_s}s" -timeout_error)
# shellcheck disable=SC2206
sipp_cmd+=($SIPP_EXTRA)
echo "call_setup: serve on 127.0.0.1:$PORT (pid $SERVER_PID), rtp ports $RTP_PORTS; ${sipp_cmd[*]}" >&2
if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f '%U %S' -o "$OUT/sipp.time" "${sipp_cmd[@]}" >"$OUT/sipp.out" 2>&1 &
else
    "${sipp_cmd[@]}" >"$OUT/sipp.out" 2>&1 &
fi
SIPP_PID=$!
sipp_rc=0
wait "$SIPP_PID" || sipp_rc=$?
SIPP_PID=''
t_sipp=$(date +%s.%N)

# Every leg gone: as many "left" lines as "joined" (at most WAIT_S more).
for _ in $(seq $((WAIT_S * 10))); do
    joined=$(grep -c '^joined' "$OUT/serve.out" || true)
    left=$(grep -c '^left' "$OUT/serve.out" || true)
    ((joined == left)) && break
    sleep 0.1
done
cpu1=$(cpu_ticks "$SERVER_PID")
server_drops=$(udp_drops "$PORT")
timeouts=$(grep -c '^left .*reason=Timeout' "$OUT/serve.out" || true)
threads1=$(thread_ticks "$SERVER_PID")
t1=$(date +%s.%N)
sleep 0.5
rss_after=$(rss_kib "$SERVER_PID")
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=''
if [[ -n $PERF_PID ]]; then wait "$PERF_PID" 2>/dev/null || true; PERF_PID=''; fi

sipp_cpu=''
if [[ -s $OUT/sipp.time ]]; then sipp_cpu=$(tail -1 "$OUT/sipp.time"); fi
[[ -s $OUT/stats.csv ]] || die "sipp wrote no statistics (exit $sipp_rc): $(tail -5 "$OUT/sipp.out")"

export SERVE_EXTRA RATE CALLS HOLD_MS LIMIT MIXER_THREADS CLK_TCK PAGE_KB OUT sipp_rc sipp_cpu idle0 idle1 IDLE_S \
    server_drops timeouts rss0 rss_after cpu0 cpu1 t0 t1 t_sipp joined left threads0 threads1
python3 - <<'EOF'
import csv, os

env = os.environ
tck = int(env["CLK_TCK"])
out = env["OUT"]

def hms(value):
    """sipp's durations: HH:MM:SS[:uuuuuu] (or a plain number of seconds)."""
    parts = value.strip().split(":")
    if len(parts) == 1:
        return float(parts[0])
    h, m, s = (float(p) for p in parts[:3])
    micro = float(parts[3]) / 1e6 if len(parts) > 3 else 0.0
    return h * 3600 + m * 60 + s + micro

with open(os.path.join(out, "stats.csv"), newline="") as f:
    rows = [r for r in csv.DictReader(f, delimiter=";") if r.get("ElapsedTime(C)")]
last = rows[-1]
num = lambda r, k: int(float(r.get(k) or 0))
calls = int(env["CALLS"])
created = num(last, "TotalCallCreated")
ok = num(last, "SuccessfulCall(C)")
failed = num(last, "FailedCall(C)")
reasons = {k[len("Failed"):-3]: num(last, k) for k in last
           if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and num(last, k)}
retrans = num(last, "Retransmissions(C)")
dead = num(last, "DeadCallMsgs(C)")
ooc = num(last, "OutOfCallMsgs(C)")
peak_current = max(num(r, "CurrentCall") for r in rows)
# sipp's screen has the true peak ("Peak was N calls"); the CSV only samples it every second.
try:
    import re
    with open(os.path.join(out, "screen.log")) as f:
        peaks = [int(m) for m in re.findall(r"Peak was (\d+) calls", f.read())]
    peak_current = max(peaks + [peak_current])
except OSError:
    pass

# When the last call was created: interpolated within the statistics period that created it.
t_created = None
prev_t, prev_n = 0.0, 0
epoch = lambda r, k: float(r[k].split("\t")[-1])
start = epoch(rows[0], "StartTime")
for r in rows:
    t, n = epoch(r, "CurrentTime") - start, num(r, "TotalCallCreated")
    if n >= created and created > 0:
        t_created = prev_t + (t - prev_t) * (created - prev_n) / max(n - prev_n, 1)
        break
    prev_t, prev_n = t, n
rate = created / t_created if t_created else float("nan")
# The steady rate: the median of the periodic rates of the full periods.
periodic = sorted(float(r.get("CallRate(P)") or 0) for r in rows if num(r, "TotalCallCreated") < created)
median_rate = periodic[len(periodic) // 2] if periodic else float("nan")
# INVITE to 200 (sipp's response time 1): its buckets, in ms.
buckets = [(k[len("ResponseTimeRepartition1_"):], num(last, k)) for k in last
           if k.startswith("ResponseTimeRepartition1_")]
answered = sum(n for _, n in buckets) or 1
under10 = sum(n for b, n in buckets if b == "<10")
over200 = sum(n for b, n in buckets if b.startswith(">="))
slowest = next((b for b, n in reversed(buckets) if n), "-")

cpu_s = (float(env["cpu1"]) - float(env["cpu0"])) / tck
wall = float(env["t1"]) - float(env["t0"])
idle_s = (float(env["idle1"]) - float(env["idle0"])) / tck
idle_rate = idle_s / float(env["IDLE_S"]) if float(env["IDLE_S"]) > 0 else 0.0

def threads(text):
    d = {}
    for line in text.strip().splitlines():
        name, t = line.rsplit(" ", 1)
        d[name] = d.get(name, 0) + float(t)
    return d
th0, th1 = threads(env["threads0"]), threads(env["threads1"])
by_thread = {n: (th1[n] - th0.get(n, 0)) / tck for n in th1}
split = {"sipbridge-io": 0.0, "sipbridge-mixer": 0.0}
for n, s in by_thread.items():
    key = n if n in split else "other"
    split[key] = split.get(key, 0.0) + s

samples, sipp_drops = [], 0
with open(os.path.join(out, "rss.txt")) as f:
    for line in f:
        p = line.split()
        if len(p) == 3 and p[1].isdigit():
            samples.append((float(p[0]), int(p[1])))
            sipp_drops = max(sipp_drops, int(p[2]))
rss0 = int(env["rss0"])
peak = max((kib for t, kib in samples if t >= float(env["t0"])), default=rss0)
growth = peak - rss0
per_call = growth / peak_current if peak_current else float("nan")

sipp_cpu = env.get("sipp_cpu", "").split()
sipp_s = sum(float(x) for x in sipp_cpu) if len(sipp_cpu) == 2 else None
per_call_ms = cpu_s / ok * 1000 if ok else float("nan")

print(f"call setup: sipp uac, {env['RATE']} cps asked, {calls} calls, hold {env['HOLD_MS']} ms, "
      f"at most {env['LIMIT']} at once, mixer threads {env['MIXER_THREADS']} (0 = one per core)"
      + (f", serve {env['SERVE_EXTRA']}" if env.get("SERVE_EXTRA") else ""))
print(f"calls: attempted {created}, successful {ok}, failed {failed}"
      + (f" ({', '.join(f'{k} {v}' for k, v in reasons.items())})" if reasons else "")
      + f"; retransmissions {retrans}, out-of-call msgs {ooc}, dead-call msgs {dead}; sipp exit {env['sipp_rc']}")
stuck = int(env["joined"]) - int(env["left"])
timeouts = int(env["timeouts"])
not_by_bye = stuck + timeouts
print(f"server legs: joined {env['joined']}, left {env['left']}"
      + (f" -- {stuck} STILL IN THE ROOM after sipp ended" if stuck else "")
      + (f" -- {timeouts} ended by the server's ACK timeout, not by a BYE" if timeouts else "")
      + f"; SIP datagrams dropped by a full receive buffer: {env['server_drops']} at the server, "
      f"{sipp_drops} at sipp (as last sampled)")
print(f"achieved rate: {rate:.0f} calls/s ({created} calls created in {t_created:.2f} s; "
      f"median per-second rate {median_rate:.0f})"
      + f"; INVITE to 200: {100 * under10 / answered:.1f} % under 10 ms, {over200} at 200 ms or more, "
      f"slowest bucket {slowest} ms")
print(f"server CPU: {cpu_s:.2f} s over {wall:.1f} s ({100 * cpu_s / wall:.0f} % of a core): "
      f"{per_call_ms:.3f} ms per call "
      f"(idle: {1000 * idle_rate:.1f} ms/s, {1000 * idle_rate * wall:.0f} ms of the total); "
      f"by thread: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
print(f"server memory: VmRSS {rss0} KiB before, {peak} KiB at peak (+{growth} KiB), {env['rss_after']} KiB after; "
      f"peak concurrent calls {peak_current} (rate x hold = "
      f"{int(env['RATE']) * int(env['HOLD_MS']) // 1000}): {per_call:.1f} KiB per concurrent call, "
      f"{growth / max(created, 1):.1f} KiB per call attempted")
if sipp_s is not None:
    print(f"sipp CPU: {sipp_s:.2f} s ({100 * sipp_s / (float(env['t_sipp']) - float(env['t0'])):.0f} % of a core over its run), "
          f"{sipp_s / max(created, 1) * 1000:.3f} ms per call")
print(f"files: {out} (stats.csv, errors.log, screen.log, serve.out, serve.err, rss.txt)")
print("| cps asked | calls | hold ms | achieved cps | successful | failed | legs not ended by BYE | retrans | "
      "SIP drops at server | server CPU s | ms/call | peak concurrent | RSS growth KiB | KiB/concurrent call | "
      "sipp CPU % |")
print(f"| {env['RATE']} | {created} | {env['HOLD_MS']} | {rate:.0f} | {ok} | {failed} | {not_by_bye} | {retrans} | "
      f"{env['server_drops']} | {cpu_s:.2f} | "
      f"{per_call_ms:.3f} | {peak_current} | {growth} | {per_call:.1f} | "
      + (f"{100 * sipp_s / (float(env['t_sipp']) - float(env['t0'])):.0f}" if sipp_s is not None else "-") + " |")
EOF
