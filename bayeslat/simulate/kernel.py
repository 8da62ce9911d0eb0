"""The numba kernel of the discrete-event simulation of one vLLM v1 instance.

The core loop (:func:`_sim_kernel`) is numba-compiled over flat arrays. One iteration = one
engine step:

1. **Arrivals.** Requests whose ``arrival_us`` has passed get their alpha delay
   ``alpha . alpha_features(prompt, queue_depth, multiproc)`` (ms; queue depth = running + waiting at the
   step boundary where the arrival is processed) and enter the wait queue at
   ``arrival + delay`` (ordered by that time). Requests whose prompt + output cannot fit in the
   whole KV cache (or exceed ``max_model_len``) are rejected at arrival (failed).
2. **Timeouts.** Requests whose ``arrival + timeout_us`` has passed are aborted (blocks freed,
   marked failed). A request finishing in a step that ends after its deadline is failed too
   (the client had gone).
3. **Schedule running requests** in admission order: ``n_new = min(P + g - c, budget)`` tokens
   (``P`` prompt, ``g`` tokens generated, ``c`` tokens in the KV cache; 1 for a decode, the next
   chunk for a chunked prefill). A request needing a KV block when none is free (after evicting
   cached prefix blocks, LRU) preempts the most recently admitted running request (recompute:
   its blocks are freed, ``c = 0``, it goes back to the head of the wait queue, ``preemptions``
   + 1), repeatedly, possibly itself.
4. **Admit waiting requests** FCFS (only if nothing was preempted this step, as vLLM v1) while
   ``max_num_seqs`` and the token budget allow and blocks can be allocated without preemption;
   with chunked prefill the last one may get a partial chunk, without it a prompt must fit whole
   (else admission stops). A resumed request recomputes ``P + g`` tokens (prompt + outputs).
5. **Step time.** The STATS vector of the scheduled batch (``features.STATS``: ``t_i`` new tokens
   over context ``c_i``; a request is a decode iff ``g >= 1`` and only its last token is missing)
   -> ``features.step_features_kernel`` -> regime -> ``dt_ms = sum_f raw_f / BETA_SCALE_f x
   beta[regime, f]``, times ``max(0.05, 1 + step_noise x z)`` with z ~ N(0,1) (seeded) when
   ``step_noise > 0``; floored at 1 us. The clock advances by dt.
6. **Emit.** A request whose ``c`` reaches ``P + g`` emits a token at the step's end (the first
   one = TTFT); at ``g = output_tokens`` it finishes and frees its blocks.

Idle engine: the clock jumps to the next arrival / queue entry.

**Prefix caching** (``prefix_caching``): only the workload's shared prefix (``prefix_group``,
``prefix_length``) is cached, in full blocks (``nb = min_group(prefix_length) // block_size``).
The first request of a group whose prefix is not resident computes it and *populates* the
group's ``nb`` blocks (shared, reference-counted); once its ``c >= nb x block_size`` the group
is resident and later requests (with prompt + outputs >= ``nb x block_size`` tokens) start with
those tokens cached (not computed, counted in ``cached_tokens``), at most the full blocks
before the last token (vLLM v1 computes at least one token: a prompt of exactly ``nb`` blocks
recomputes its last block). Blocks of a group with no
holder stay resident as evictable cache and are evicted LRU (by last use) when an allocation
needs free blocks. Requests' own (non-prefix) blocks are not cached after they finish.

**CPU KV offload** (``cpu_kv_blocks > 0``, simplified): when a request is preempted and the CPU
cache has room, its ``c`` computed tokens are stored there (``offload_tokens`` += c); on
re-admission they are loaded back (``offload_tokens`` += loaded, up to ``P + g - 1``) instead of
recomputed, and the CPU blocks are freed. Evicted prefix blocks are not offloaded.
"""

from __future__ import annotations

import numba
import numpy as np

from bayeslat import features as F

N_BETA = F.N_BETA
_WORKERS = F.C["workers"]  # index of FeatureContext.workers in the context array (read by the kernel)

ST_DONE, ST_FAILED = 4, 5


@numba.njit(cache=True)
def _alloc(need, st, gstate, gref, glast, gnb):
    """Take `need` free blocks (st[0] free, st[1] cached-evictable), evicting LRU cached prefix
    groups as needed. Returns True on success."""
    if need <= 0:
        return True
    while st[0] < need and st[1] > 0:
        best = -1
        bt = np.inf
        for g in range(gstate.shape[0]):
            if gstate[g] == 2 and gref[g] == 0 and glast[g] < bt:
                bt = glast[g]
                best = g
        if best < 0:
            break
        gstate[best] = 0
        st[0] += gnb[best]
        st[1] -= gnb[best]
    if st[0] >= need:
        st[0] -= need
        return True
    return False


@numba.njit(cache=True)
def _release_group(r, t, pfxb, grp, st, gstate, gref, glast, gnb):
    if pfxb[r] > 0:
        g = grp[r]
        gref[g] -= 1
        if gref[g] == 0:
            if gstate[g] == 2:
                st[1] += gnb[g]
                glast[g] = t
            else:  # the populating request left before the prefix was computed
                st[0] += gnb[g]
                gstate[g] = 0
        pfxb[r] = 0


@numba.njit(cache=True)
def _sim_kernel(
    arrival,
    prompt,
    outlen,
    grp,
    deadline,
    dorder,
    reject,
    gnb,
    max_seqs,
    max_tokens,
    bs,
    kv_blocks,
    cpu_blocks,
    chunked,
    prefix_on,
    ctx,
    beta,
    alpha,
    step_noise,
    seed,
    record,
    inv_scale,
):
    n = arrival.shape[0]
    G = gnb.shape[0]
    mproc = 1.0 if ctx[_WORKERS] > 1.0 else 0.0  # FeatureContext.workers: multi-process executor
    # per-request state
    state = np.zeros(n, np.int64)  # 0 future, 1 pending (alpha delay), 2 waiting, 3 running, 4 done, 5 failed
    comp = np.zeros(n, np.int64)  # tokens in the KV cache
    gen = np.zeros(n, np.int64)  # tokens generated
    own = np.zeros(n, np.int64)  # own blocks held
    pfxb = np.zeros(n, np.int64)  # shared prefix blocks referenced
    cpu_tok = np.zeros(n, np.int64)
    cpu_blk = np.zeros(n, np.int64)
    t_queued = np.full(n, np.nan)
    t_sched = np.full(n, np.nan)
    t_first = np.full(n, np.nan)
    t_fin = np.full(n, np.nan)
    qdepth = np.zeros(n, np.int64)
    n_pre = np.zeros(n, np.int64)
    cached_tok = np.zeros(n, np.int64)
    computed_tok = np.zeros(n, np.int64)
    loaded_tok = np.zeros(n, np.int64)
    # groups
    gstate = np.zeros(G, np.int64)
    gref = np.zeros(G, np.int64)
    glast = np.zeros(G)
    gholder = np.full(G, -1, np.int64)
    # queues
    cap = n + 1
    wq = np.empty(cap, np.int64)
    head = 0
    tail = 0
    nwait = 0
    run = np.empty(max_seqs, np.int64)
    nrun = 0
    pend = np.empty(n, np.int64)
    npend = 0
    ready = np.empty(n, np.int64)
    # schedule of one step
    s_req = np.empty(max_seqs + 1, np.int64)
    s_new = np.empty(max_seqs + 1, np.int64)
    s_ctx = np.empty(max_seqs + 1, np.int64)
    s_pf = np.empty(max_seqs + 1, np.bool_)
    stats = np.zeros(8)
    raw = np.zeros(N_BETA)  # raw beta features
    blk = np.zeros(2, np.int64)  # [free, cached-evictable]
    blk[0] = kv_blocks
    cpu_used = 0
    # trace
    tcap = 1024 if record else 1
    trace = np.zeros((tcap, 17))
    # counters
    steps = 0
    total_pre = 0
    max_used = 0
    max_run = 0
    max_tok = 0
    tot_prefill = 0
    tot_decode = 0
    tot_offload = 0.0
    busy_us = 0.0
    if seed >= 0:
        np.random.seed(seed)

    t = arrival[0] if n > 0 else 0.0
    ia = 0
    idl = 0
    done = 0
    while done < n:
        # 1. arrivals
        while ia < n and arrival[ia] <= t:
            if reject[ia]:
                state[ia] = 5
                t_fin[ia] = arrival[ia]
                done += 1
            else:
                qd = nrun + nwait
                qdepth[ia] = qd
                d_ms = alpha[0] + alpha[1] * prompt[ia] / 1000.0 + alpha[2] * qd / 100.0 + alpha[3] * mproc
                if d_ms < 0.0:
                    d_ms = 0.0
                t_queued[ia] = arrival[ia] + d_ms * 1000.0
                state[ia] = 1
                pend[npend] = ia
                npend += 1
            ia += 1
        # pending -> wait queue, in order of queue time
        if npend > 0:
            nready = 0
            k = 0
            while k < npend:
                r = pend[k]
                if state[r] != 1:
                    pend[k] = pend[npend - 1]
                    npend -= 1
                    continue
                if t_queued[r] <= t:
                    ready[nready] = r
                    nready += 1
                    pend[k] = pend[npend - 1]
                    npend -= 1
                    continue
                k += 1
            # insertion sort by queue time (few per step)
            for a in range(1, nready):
                x = ready[a]
                b = a - 1
                while b >= 0 and (t_queued[ready[b]] > t_queued[x] or (t_queued[ready[b]] == t_queued[x] and ready[b] > x)):
                    ready[b + 1] = ready[b]
                    b -= 1
                ready[b + 1] = x
            for a in range(nready):
                r = ready[a]
                state[r] = 2
                wq[tail] = r
                tail = (tail + 1) % cap
                nwait += 1
        # 2. timeouts
        removed = False
        while idl < n and deadline[dorder[idl]] <= t:
            r = dorder[idl]
            idl += 1
            s = state[r]
            if s == 0:
                continue
            if s == 1 or s == 2 or s == 3:
                if s == 2:
                    nwait -= 1
                if s == 3:
                    blk[0] += own[r]
                    own[r] = 0
                    _release_group(r, t, pfxb, grp, blk, gstate, gref, glast, gnb)
                    removed = True
                if cpu_blk[r] > 0:
                    cpu_used -= cpu_blk[r]
                    cpu_blk[r] = 0
                    cpu_tok[r] = 0
                state[r] = 5
                t_fin[r] = t
                done += 1
        if removed:
            m = 0
            for k in range(nrun):
                if state[run[k]] == 3:
                    run[m] = run[k]
                    m += 1
            nrun = m
        if done >= n:
            break
        if nrun == 0 and nwait == 0:
            nxt = np.inf
            if ia < n:
                nxt = arrival[ia]
            for k in range(npend):
                if state[pend[k]] == 1 and t_queued[pend[k]] < nxt:
                    nxt = t_queued[pend[k]]
            if idl < n and deadline[dorder[idl]] < nxt:
                nxt = deadline[dorder[idl]]
            if nxt == np.inf:
                break
            if nxt > t:
                t = nxt
            continue

        # 3. schedule running requests
        budget = max_tokens
        nsched = 0
        npre = 0
        offl = 0
        i = 0
        while i < nrun and budget > 0:
            r = run[i]
            target = prompt[r] + gen[r]
            n_new = target - comp[r]
            if n_new > budget:
                if chunked:
                    n_new = budget
                else:
                    i += 1
                    continue
            need = (comp[r] + n_new + bs - 1) // bs - pfxb[r] - own[r]
            ok = True
            while need > 0 and not _alloc(need, blk, gstate, gref, glast, gnb):
                v = run[nrun - 1]
                nrun -= 1
                # preempt v (recompute)
                blk[0] += own[v]
                own[v] = 0
                _release_group(v, t, pfxb, grp, blk, gstate, gref, glast, gnb)
                if cpu_blocks > 0 and comp[v] > 0 and cpu_blk[v] == 0:
                    nb_c = (comp[v] + bs - 1) // bs
                    if cpu_used + nb_c <= cpu_blocks:
                        cpu_used += nb_c
                        cpu_blk[v] = nb_c
                        cpu_tok[v] = comp[v]
                        offl += comp[v]
                comp[v] = 0
                state[v] = 2
                head = (head - 1 + cap) % cap
                wq[head] = v
                nwait += 1
                n_pre[v] += 1
                npre += 1
                if v == r:
                    ok = False
                    break
            if not ok:
                break
            if need > 0:
                own[r] += need
            s_req[nsched] = r
            s_new[nsched] = n_new
            s_ctx[nsched] = comp[r]
            s_pf[nsched] = not (gen[r] >= 1 and comp[r] == target - 1)
            nsched += 1
            budget -= n_new
            i += 1
        total_pre += npre

        # 4. admit waiting requests (FCFS)
        if npre == 0:
            while nwait > 0 and budget > 0 and nrun < max_seqs:
                r = wq[head]
                if state[r] != 2:  # lazily deleted (timed out while waiting)
                    head = (head + 1) % cap
                    continue
                g = grp[r]
                target = prompt[r] + gen[r]
                mode = 0
                nbg = 0
                hit = 0
                if prefix_on and g >= 0:
                    nbg = gnb[g]
                    # vLLM v1 caps a hit at target - 1 tokens (one token must be computed): a
                    # prompt that is exactly the cached prefix recomputes its last block
                    if nbg > 0 and target >= nbg * bs:
                        if gstate[g] == 2:
                            mode = 1
                            hit = min(nbg, (target - 1) // bs) * bs
                        elif gstate[g] == 0:
                            mode = 2
                load = 0
                if cpu_tok[r] > 0:
                    load = min(cpu_tok[r], target - 1)
                c0 = hit if hit > load else load
                n_new = target - c0
                if n_new > budget:
                    if not chunked:
                        break
                    n_new = budget
                pb = nbg if mode > 0 else 0
                need = (c0 + n_new + bs - 1) // bs - pb
                if need < 0:
                    need = 0
                total = need + (nbg if mode == 2 else 0)
                if mode == 1:
                    if gref[g] == 0:
                        blk[1] -= nbg
                    gref[g] += 1
                if not _alloc(total, blk, gstate, gref, glast, gnb):
                    if mode == 1:
                        gref[g] -= 1
                        if gref[g] == 0:
                            blk[1] += nbg
                    break
                if mode == 2:
                    gstate[g] = 1
                    gref[g] = 1
                    gholder[g] = r
                if mode == 1:
                    glast[g] = t
                    cached_tok[r] += hit
                pfxb[r] = pb
                own[r] = need
                comp[r] = c0
                if cpu_tok[r] > 0:
                    ld = load
                    if mode == 1:
                        ld = load - hit if load > hit else 0
                    if ld > 0:
                        offl += ld
                        loaded_tok[r] += ld
                    cpu_used -= cpu_blk[r]
                    cpu_blk[r] = 0
                    cpu_tok[r] = 0
                head = (head + 1) % cap
                nwait -= 1
                state[r] = 3
                run[nrun] = r
                nrun += 1
                if np.isnan(t_sched[r]):
                    t_sched[r] = t
                s_req[nsched] = r
                s_new[nsched] = n_new
                s_ctx[nsched] = c0
                s_pf[nsched] = not (gen[r] >= 1 and c0 == target - 1)
                nsched += 1
                budget -= n_new

        if nsched == 0:
            if nrun == 0 and nwait > 0 and npre == 0:
                # the head request cannot be placed even in an empty engine: fail it
                while nwait > 0:
                    r = wq[head]
                    head = (head + 1) % cap
                    if state[r] == 2:
                        nwait -= 1
                        state[r] = 5
                        t_fin[r] = t
                        done += 1
                        break
            continue

        # 5. batch statistics and step time
        for k in range(8):
            stats[k] = 0.0
        ntok = 0
        for k in range(nsched):
            tn = float(s_new[k])
            c = float(s_ctx[k])
            ntok += s_new[k]
            if s_pf[k]:
                stats[0] += 1.0
                stats[2] += tn
                stats[3] += tn * (c + (tn + 1.0) / 2.0)
                stats[4] += c + tn
                tot_prefill += s_new[k]
            else:
                stats[1] += 1.0
                stats[5] += c + 1.0
                tot_decode += s_new[k]
            computed_tok[s_req[k]] += s_new[k]
        stats[6] = float(offl)
        stats[7] = float(npre)
        tot_offload += offl
        F.step_features_kernel(stats, ctx, raw)
        reg = F.regime_kernel(raw)
        dt_ms = 0.0
        for f in range(raw.shape[0]):
            dt_ms += raw[f] * inv_scale[f] * beta[reg, f]
        if step_noise > 0.0:
            fac = 1.0 + step_noise * np.random.standard_normal()
            if fac < 0.05:
                fac = 0.05
            dt_ms *= fac
        dt_us = dt_ms * 1000.0
        if not dt_us >= 1.0:
            dt_us = 1.0
        t_end = t + dt_us
        used = kv_blocks - blk[0] - blk[1]
        if used > max_used:
            max_used = used
        if nrun > max_run:
            max_run = nrun
        if ntok > max_tok:
            max_tok = ntok
        if record:
            if steps >= tcap:
                tcap *= 2
                nt = np.zeros((tcap, 17))
                nt[:steps] = trace[:steps]
                trace = nt
            trace[steps, 0] = t
            for k in range(8):
                trace[steps, 1 + k] = stats[k]
            trace[steps, 9] = reg
            trace[steps, 10] = dt_ms
            trace[steps, 11] = nrun
            trace[steps, 12] = nwait
            trace[steps, 13] = used
            trace[steps, 14] = blk[1]
            trace[steps, 15] = ntok
            trace[steps, 16] = blk[0]
        steps += 1
        busy_us += dt_us

        # 6. emit tokens, finish
        finished = False
        for k in range(nsched):
            r = s_req[k]
            comp[r] += s_new[k]
            g = grp[r]
            if g >= 0 and gstate[g] == 1 and gholder[g] == r and comp[r] >= gnb[g] * bs:
                gstate[g] = 2
                glast[g] = t_end
            if comp[r] == prompt[r] + gen[r]:
                gen[r] += 1
                if np.isnan(t_first[r]):
                    t_first[r] = t_end
                if gen[r] >= outlen[r]:
                    t_fin[r] = t_end
                    state[r] = 4 if t_end <= deadline[r] else 5
                    blk[0] += own[r]
                    own[r] = 0
                    _release_group(r, t_end, pfxb, grp, blk, gstate, gref, glast, gnb)
                    if cpu_blk[r] > 0:
                        cpu_used -= cpu_blk[r]
                        cpu_blk[r] = 0
                        cpu_tok[r] = 0
                    done += 1
                    finished = True
        if finished:
            m = 0
            for k in range(nrun):
                if state[run[k]] == 3:
                    run[m] = run[k]
                    m += 1
            nrun = m
        t = t_end

    counters = np.array(
        [
            steps,
            total_pre,
            max_used,
            max_run,
            max_tok,
            tot_prefill,
            tot_decode,
            tot_offload,
            busy_us,
            t,
            kv_blocks - blk[0] - blk[1],
            blk[1],
            cpu_used,
        ],
        dtype=np.float64,
    )
    return (
        state,
        t_queued,
        t_sched,
        t_first,
        t_fin,
        n_pre,
        cached_tok,
        computed_tok,
        loaded_tok,
        qdepth,
        counters,
        trace[:steps],
    )


COUNTERS = (
    "steps",
    "preemptions",
    "max_kv_used",
    "max_running",
    "max_batch_tokens",
    "prefill_tokens",
    "decode_tokens",
    "offload_tokens",
    "busy_us",
    "end_us",
    "kv_used_end",
    "kv_cached_end",
    "cpu_used_end",
)
