#!/usr/bin/env python3
"""Figures of scripts/soak.sh, from what it collected in its run directory.

  report.py minute RUN N   the figures of minute N (wrk output of both gateways, AS
                           counters, RSS of every process)
  report.py final RUN      totals and the PASS/FAIL lines; exit status 1 on any FAIL

RUN holds:
  samples/m<N>     after minute N (m0: before the load): "time T", "as GATEWAY {stats json}",
                   "rss LABEL PID KB", "upstream {json}", "alive LABEL PID 0|1"
  m<N>/GATEWAY.out what traffic.lua's done() wrote for that minute, and
                   GATEWAY.out.seen.<thread>: the distinct tokens each wrk thread sent
  soak.env         KEY=VALUE: MINUTES, POOL, TTL, ...
Only the standard library.
"""
import json
import os
import sys

GATEWAYS = ("nginx", "demo")
# Processes whose memory is checked (the gateways); the others are printed for information.
CHECKED = ("nginx-master", "nginx-worker", "demo")
EXPECTED = {"valid": {200}, "invalid": {401}, "prm": {200}, "malformed": {400, 401}}


def read_env(run):
    env = {}
    with open(os.path.join(run, "soak.env")) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


def read_sample(run, n):
    s = {"as": {}, "rss": [], "alive": [], "upstream": {}, "time": 0}
    path = os.path.join(run, "samples", f"m{n}")
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 1)
            if len(parts) < 2:
                continue
            key, rest = parts
            if key == "time":
                s["time"] = float(rest)
            elif key == "as":
                g, js = rest.split(" ", 1)
                try:
                    s["as"][g] = json.loads(js)
                except ValueError:
                    s["as"][g] = None
            elif key == "rss":
                label, pid, kb, anon, shm = (rest.split() + ["0", "0"])[:5]
                s["rss"].append((label, int(pid), int(kb)))
                s.setdefault("split", {})[(label, int(pid))] = (int(anon), int(shm))
            elif key == "cpu":
                g, pid, ticks = rest.split()
                s.setdefault("cpu", {})[(g, int(pid))] = int(ticks)
            elif key == "alive":
                label, pid, ok = rest.split()
                s["alive"].append((label, int(pid), ok == "1"))
            elif key == "shm":
                try:
                    s["shm"] = json.loads(rest)
                except ValueError:
                    s["shm"] = None
            elif key == "upstream":
                try:
                    s["upstream"] = json.loads(rest)
                except ValueError:
                    s["upstream"] = None
    return s


def read_wrk(run, n, gateway):
    w = {"sent": {}, "status": {}, "lost": {}, "inflight": {}, "not_upstream": {}, "seen": set(),
         "unique_invalid": 0, "summary": None, "latency": None}
    path = os.path.join(run, f"m{n}", f"{gateway}.out")
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if p[0] == "summary":
                d, r, c, rd, wr, st, to = map(int, p[1:8])
                w["summary"] = {"duration_s": d / 1e6, "requests": r, "connect": c, "read": rd,
                                "write": wr, "timeout": to}
            elif p[0] == "latency":
                w["latency"] = {"p50_ms": int(p[1]) / 1000, "p99_ms": int(p[2]) / 1000,
                                "max_ms": int(p[3]) / 1000}
            elif p[0] == "status":
                w["status"][(p[1], int(p[2]))] = int(p[3])
            elif p[0] in ("sent", "lost", "inflight", "not_upstream"):
                w[p[0]][p[1]] = int(p[2])
            elif p[0] == "unique_invalid":
                w["unique_invalid"] = int(p[1])
    d = os.path.dirname(path)
    for name in os.listdir(d):
        if name.startswith(f"{gateway}.out.seen."):
            with open(os.path.join(d, name), errors="replace") as f:
                w["seen"].update(line.strip() for line in f if line.strip())
    return w


def mib(kb):
    return f"{kb / 1024:.1f}"


def as_calls(sample, gateway):
    st = sample["as"].get(gateway)
    return None if st is None else st.get("introspections", 0)


class Minutes:
    """Everything per minute, and the running totals the checks need."""

    def __init__(self, run):
        self.run = run
        self.env = read_env(run)
        global GATEWAYS
        GATEWAYS = tuple(self.env.get("GATEWAYS", "nginx demo").split())
        self.samples = {0: read_sample(run, 0)}
        self.wrk = {}
        self.seen_so_far = {g: set() for g in GATEWAYS}
        self.distinct_cum = {g: 0 for g in GATEWAYS}
        self.calls_cum = {g: 0 for g in GATEWAYS}
        self.rows = []  # (minute, gateway, calls_cum, distinct_cum)

    def load(self, n):
        self.samples[n] = read_sample(self.run, n)
        for g in GATEWAYS:
            w = read_wrk(self.run, n, g)
            self.wrk[(n, g)] = w
            new = set()
            if w is not None:
                new = w["seen"] - self.seen_so_far[g]
                self.seen_so_far[g] |= new
                self.distinct_cum[g] += len(new) + w["unique_invalid"]
            a, b = as_calls(self.samples[n - 1], g), as_calls(self.samples[n], g)
            calls = None if a is None or b is None else b - a
            if calls is not None:
                self.calls_cum[g] += calls
            self.rows.append((n, g, calls, len(new) + (w["unique_invalid"] if w else 0),
                              self.calls_cum[g], self.distinct_cum[g]))

    def cpu_us_per_request(self, n, g, requests):
        """CPU time the gateway's processes used in minute n, per request it answered. With one
        gateway driven at a time the other's processes are idle, so this is the gateway's own
        cost, which other load on the machine disturbs much less than the rate."""
        a, b = self.samples[n - 1].get("cpu", {}), self.samples[n].get("cpu", {})
        keys = [k for k in b if k[0] == g]
        if not keys or not requests:
            return None
        ticks = sum(b[k] - a.get(k, 0) for k in keys)
        return ticks / float(self.env.get("CLK_TCK", "100")) * 1e6 / requests

    @staticmethod
    def split(sample, label, pid):
        """ (heap A + shared S) for processes that map nginx's shared zone."""
        anon, shm = sample.get("split", {}).get((label, pid), (0, 0))
        return f" (heap {mib(anon)} + shm {mib(shm)})" if label.startswith("nginx") and shm else ""

    def print_minute(self, n):
        s = self.samples[n]
        dt = s["time"] - self.samples[n - 1]["time"]
        how = "both gateways loaded at once" if self.env.get("PARALLEL") else "one gateway after the other"
        print(f"== minute {n} of {self.env.get('MINUTES')} ({dt:.0f} s: {how}) ==")
        for g in GATEWAYS:
            w = self.wrk[(n, g)]
            row = [r for r in self.rows if r[0] == n and r[1] == g][0]
            if w is None or w["summary"] is None:
                print(f"  {g:5}  no wrk output (see {self.run}/m{n}/{g}.txt)")
                continue
            sm, lat = w["summary"], w["latency"]
            rate = sm["requests"] / sm["duration_s"] if sm["duration_s"] else 0
            print(f"  {g:5}  requests {sm['requests']:>8}  ({rate:,.0f}/s; latency p50 {lat['p50_ms']:.1f} ms,"
                  f" p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.0f} ms)")
            parts = []
            for kind in ("valid", "invalid", "prm", "malformed"):
                st = sorted((code, c) for (k, code), c in w["status"].items() if k == kind)
                txt = " ".join(f"{code}x{c}" for code, c in st) or "-"
                extra = []
                if w["lost"].get(kind):
                    extra.append(f"lost {w['lost'][kind]}")
                if w["not_upstream"].get(kind):
                    extra.append(f"200 not from upstream {w['not_upstream'][kind]}")
                parts.append(f"{kind} {txt}" + (f" ({', '.join(extra)})" if extra else ""))
            print("         statuses: " + " | ".join(parts))
            cpu = self.cpu_us_per_request(n, g, sm["requests"])
            if cpu is not None:
                print(f"         gateway CPU: {cpu:.1f} us per request (user + system, all its processes)")
            errs = {k: sm[k] for k in ("connect", "read", "write", "timeout") if sm[k]}
            inflight = sum(w["inflight"].values())
            print(f"         wrk socket errors: {errs or 'none'}; cut in flight at the minute's end: {inflight}")
            _, _, calls, new, calls_cum, dist_cum = row
            token_reqs = w["sent"].get("valid", 0) + w["sent"].get("invalid", 0)
            share = f"{100 * calls / token_reqs:.2f} % of {token_reqs} token requests" if calls is not None and token_reqs else "n/a"
            print(f"         AS calls (introspections): {calls} ({share}); new distinct tokens {new};"
                  f" since start {calls_cum} calls <= {dist_cum} distinct tokens: {'yes' if calls_cum <= dist_cum else 'NO'}")
            rss = [(label, pid, kb) for (label, pid, kb) in s["rss"]
                   if label.startswith(g) or label == f"as-{g}"]
            print("         RSS MiB: " + "  ".join(f"{label}[{pid}] {mib(kb)}{self.split(s, label, pid)}"
                                          for label, pid, kb in rss))
            shm = s.get("shm")
            if g == "nginx" and shm:
                print(f"         shared zone: {shm['keys']} live keys ({shm.get('other')} answers and others,"
                      f" {shm.get('flight')} flight:, {shm.get('lock')} lock:),"
                      f" {mib((shm['capacity'] - shm['free_space']) / 1024)}"
                      f" of {mib(shm['capacity'] / 1024)} MiB in use (free_space); Lua heap of worker"
                      f" {shm['pid']}: {mib(shm['lua_kb'])} MiB")
        other = [(label, pid, kb) for (label, pid, kb) in s["rss"]
                 if not any(label.startswith(g) or label == f"as-{g}" for g in GATEWAYS)]
        if other:
            print("  shared RSS MiB: " + "  ".join(f"{label}[{pid}] {mib(kb)}" for label, pid, kb in other))
        sys.stdout.flush()


def final(run):
    m = Minutes(run)
    minutes = int(m.env["MINUTES"])
    done = [n for n in range(1, minutes + 1) if os.path.exists(os.path.join(run, "samples", f"m{n}"))]
    for n in done:
        m.load(n)
    fails = 0

    def verdict(ok, name, detail, skip=False):
        nonlocal fails
        word = "SKIP" if skip else ("PASS" if ok else "FAIL")
        if not ok and not skip:
            fails += 1
        print(f"{word}  {name}: {detail}")

    print(f"== totals over {len(done)} minute(s) ==")
    tot = {}
    for g in GATEWAYS:
        t = {"requests": 0, "status": {}, "lost": {}, "not_upstream": {}, "sent": {}, "sock": 0}
        for n in done:
            w = m.wrk.get((n, g))
            if not w or not w["summary"]:
                continue
            t["requests"] += w["summary"]["requests"]
            t["sock"] += sum(w["summary"][k] for k in ("connect", "read", "write", "timeout"))
            for key in ("status", "lost", "not_upstream", "sent"):
                for k, v in w[key].items():
                    t[key][k] = t[key].get(k, 0) + v
        tot[g] = t
        dur = sum(m.wrk[(n, g)]["summary"]["duration_s"] for n in done if m.wrk.get((n, g)) and m.wrk[(n, g)]["summary"])
        rate = t["requests"] / dur if dur else 0
        st = " ".join(f"{k}:{code}x{c}" for (k, code), c in sorted(t["status"].items()))
        print(f"  {g:5}  requests {t['requests']} ({rate:,.0f}/s)  {st}")
        print(f"         AS calls {m.calls_cum[g]} for {m.distinct_cum[g]} distinct tokens"
              f" ({t['sent'].get('valid', 0) + t['sent'].get('invalid', 0)} token requests)")

    # 1. Valid traffic: every valid request answered 200 by the upstream, none lost.
    for g in GATEWAYS:
        t = tot[g]
        sent = t["sent"].get("valid", 0)
        bad = sum(c for (k, code), c in t["status"].items() if k == "valid" and code != 200)
        lost = t["lost"].get("valid", 0)
        notup = t["not_upstream"].get("valid", 0)
        ok200 = t["status"].get(("valid", 200), 0)
        verdict(sent > 0 and bad == 0 and lost == 0 and notup == 0, f"{g}: 0 errors on valid traffic",
                f"{ok200} valid requests answered 200 by the upstream; {bad} other statuses, {lost} lost,"
                f" {notup} 200s not from the upstream")

    # 2. Memory: RSS at the end within +10 % of RSS after minute 1, per gateway process.
    if len(done) >= 2:
        first, last = m.samples[1], m.samples[done[-1]]
        by_pid_first = {(label, pid): kb for label, pid, kb in first["rss"]}
        for label, pid, kb in last["rss"]:
            base = by_pid_first.get((label, pid))
            checked = any(label.startswith(c) for c in CHECKED)
            if base is None:
                if checked:
                    verdict(False, f"RSS {label}[{pid}]", "not present after minute 1 (a new process)")
                continue
            growth = 100.0 * (kb - base) / base if base else 0.0
            detail = f"{mib(base)} MiB after minute 1 -> {mib(kb)} MiB after minute {done[-1]} ({growth:+.1f} %)"
            shm0 = first.get("split", {}).get((label, pid), (0, 0))[1]
            shm1 = last.get("split", {}).get((label, pid), (0, 0))[1]
            if checked and label.startswith("nginx") and (shm0 or shm1):
                # The pages of the lua_shared_dict zone a worker has touched count in its RSS
                # (RssShmem) and grow towards the zone's fixed size as the slab allocator
                # spreads over it: not a leak, and bounded (checked below). The +10 % rule
                # applies to the rest (heap, stacks, mapped files).
                p0, p1 = base - shm0, kb - shm1
                pg = 100.0 * (p1 - p0) / p0 if p0 else 0.0
                verdict(p1 <= p0 * 1.10, f"RSS {label}[{pid}] without the shared zone within +10 %",
                        f"{mib(p0)} -> {mib(p1)} MiB ({pg:+.1f} %); with the zone's pages (VmRSS): {detail};"
                        f" zone pages {mib(shm0)} -> {mib(shm1)} MiB")
            elif checked:
                verdict(kb <= base * 1.10, f"RSS {label}[{pid}] within +10 %", detail)
            else:
                print(f"info  RSS {label}[{pid}] (test harness, not checked): {detail}")
        zone = (m.samples[done[-1]].get("shm") or {}).get("capacity")
        if zone and "nginx" in GATEWAYS:
            most = max((v[1] for (label, _), v in last.get("split", {}).items() if label.startswith("nginx")), default=0)
            # capacity() is the zone minus nginx's slab bookkeeping: allow the zone's size + 10 %.
            verdict(most * 1024 <= zone * 1.10, "nginx shared-zone pages bounded by the zone",
                    f"at most {mib(most)} MiB touched by one process; lua_shared_dict mcp_oauth2 {mib(zone / 1024)} MiB")
    else:
        verdict(True, "RSS within +10 % of minute 1", "needs at least 2 minutes", skip=True)

    # 3. No worker restarts: the same nginx master and workers, and the demo, from start to end.
    s0 = m.samples[0]
    w0 = sorted(pid for label, pid, _ in s0["rss"] if label == "nginx-worker")
    changed = []
    for n in done:
        wn = sorted(pid for label, pid, _ in m.samples[n]["rss"] if label == "nginx-worker")
        if wn != w0:
            changed.append(f"minute {n}: {wn}")
    died = [f"{label}[{pid}] after minute {n}" for n in done for label, pid, ok in m.samples[n]["alive"] if not ok]
    crash_lines = []
    log = os.path.join(run, "nginx", "logs", "error.log")
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            crash_lines = [l.strip() for l in f if "exited on signal" in l or "exited with code" in l]
    verdict(not changed and not died and not crash_lines and len(w0) == 2,
            "no worker restarts",
            f"nginx workers {w0} throughout" if not changed else "; ".join(changed)
            + (f"; gone: {', '.join(died)}" if died else "")
            + (f"; error.log: {crash_lines[:3]}" if crash_lines else ""))

    # 4. AS calls bounded: never more introspections than distinct tokens sent (an invalid
    #    token counts once per negative-cache window it is used in, a pool token once).
    for g in GATEWAYS:
        worst = [r for r in m.rows if r[1] == g and r[4] > r[5]]
        calls_ok = all(r[2] is not None for r in m.rows if r[1] == g)
        verdict(calls_ok and not worst, f"{g}: AS calls bounded by distinct tokens",
                f"{m.calls_cum[g]} introspections <= {m.distinct_cum[g]} distinct tokens"
                f" (checked after every minute, cumulatively)"
                if not worst else f"minute {worst[0][0]}: {worst[0][4]} calls > {worst[0][5]} distinct tokens")

    # 5. The rest of the traffic got what it should, and only valid requests reached the
    #    upstream (a 200 or an upstream hit for anything else would be a bypass).
    for g in GATEWAYS:
        t = tot[g]
        odd = {f"{k} {code}": c for (k, code), c in t["status"].items() if k != "valid" and code not in EXPECTED[k]}
        odd_lost = {k: v for k, v in t["lost"].items() if k != "valid" and v}
        leaks = {k: v for k, v in t["not_upstream"].items() if k != "valid"}
        verdict(not odd and not odd_lost, f"{g}: other traffic answered as expected",
                "invalid 401, malformed 400/401, PRM 200" + (f"; unexpected: {odd}" if odd else "")
                + (f"; lost: {odd_lost}" if odd_lost else "") + (f"; {leaks}" if leaks else ""))
    # Counted from the start of the load (the checks by hand before it are not traffic).
    up0 = m.samples[0]["upstream"] or {}
    up_end = m.samples[done[-1]]["upstream"] if done else {}
    up = None if up_end is None else {k: v - up0.get(k, 0) for k, v in up_end.items() if v - up0.get(k, 0)}
    leaked = {k: v for k, v in (up or {}).items() if k != "valid"}
    verdict(up is not None and not leaked, "only valid requests reached the upstream",
            f"upstream saw {up} during the load")

    print("RESULT: " + ("PASS" if fails == 0 else f"FAIL ({fails} failed check(s))"))
    return 1 if fails else 0


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "minute":
        run, n = sys.argv[2], int(sys.argv[3])
        m = Minutes(run)
        for k in range(1, n + 1):
            m.load(k)
        m.print_minute(n)
        return 0
    if len(sys.argv) >= 3 and sys.argv[1] == "final":
        return final(sys.argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
