"""Compile every kernel for a GPU target without a GPU: `python -m bltlab.kernels.compile_check`.

Triton's interpreter (the CPU tests) runs the kernels as Python and cannot tell whether they
compile; this lowers each one through Triton's real compiler (TTIR -> LLVM -> PTX -> cubin
with the ptxas bundled in the triton wheel) for a chosen target, default sm_90 (H100), in fp32
and bf16, and prints shared memory per kernel. It runs nothing. TRITON_INTERPRET must be unset.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

I32, F32, I64P = "i32", "fp32", "*i64"


def specs(dt: str, head_dims=(32, 64, 128)):
    """(name, kernel, {arg: type}, {constexpr: value}) for every kernel at activation dtype dt."""
    from . import attention as A, entropy as E, hash_embed as HE, norm_ffn as N, norm_proj as NP, pooling as PO
    from . import step as S

    p, f = f"*{dt}", "*fp32"
    out = [("entropy", E._confidence_kernel, dict(x_ptr=p, ent_ptr=f, conf_ptr=f, arg_ptr=I64P, V=I32, stride=I32),
            dict(BLOCK=512))]
    for res in (False, True):
        out += [(f"rms_fwd res={res}", N._rms_fwd, dict(x_ptr=p, r_ptr=p, s_ptr=p, y_ptr=f, w_ptr=f, rstd_ptr=f, D=I32,
                                                         eps=F32), dict(HAS_RES=res, BLOCK=128)),
                (f"rms_bwd res={res}", N._rms_bwd, dict(s_ptr=p, gy_ptr=f, gs_in_ptr=p, w_ptr=f, rstd_ptr=f, gs_ptr=f,
                                                         gw_ptr=f, N=I32, D=I32), dict(HAS_GS=res, BLOCK=128))]
    for res, pre in ((False, False), (True, False), (True, True)):  # PRE: the residual is h @ P.T
        flags = dict(HAS_RES=res, PRE=pre, BLOCK_R=16, BLOCK_O=32, BLOCK_K=64, DOT_FP32=dt == "fp32")
        for act in (False, True):
            out.append((f"norm_linear res={res} pre={pre} swiglu={act}", NP._norm_linear_fwd,
                        dict(x_ptr=p, r_ptr=p, p_ptr=p, s_ptr=p, g_ptr=p, w_ptr=p, y_ptr=p, N=I32, D=I32, FP=I32,
                             OUT=I32, eps=F32), dict(SWIGLU=act, **flags)))
        out.append((f"norm_qkv res={res} pre={pre}", NP._norm_qkv_fwd,
                    dict(x_ptr=p, r_ptr=p, p_ptr=p, s_ptr=p, g_ptr=p, w_ptr=p, rot_ptr=f, pos_ptr=I64P, crow_ptr=I64P,
                         q_ptr=p, kv_ptr=p, N=I32, L=I32, D=I32, FP=I32, HD=I32, eps=F32, s_kv=I32, s_b=I32, s_h=I32,
                         s_s=I32), flags))
    rows = dict(n=I32, W=I32, sa=I32, sb=I32)  # a and b read as rows of width W at row strides sa, sb
    out += [("swiglu_fwd", N._swiglu_fwd, dict(a_ptr=p, b_ptr=p, y_ptr=p, **rows), dict(BLOCK=1024)),
            ("swiglu_bwd", N._swiglu_bwd, dict(a_ptr=p, b_ptr=p, g_ptr=p, ga_ptr=p, gb_ptr=p, **rows), dict(BLOCK=1024)),
            ("hash_fwd", HE._hash_fwd, dict(ids_ptr=I64P, byte_ptr=p, out_ptr=p, idx_ptr=I64P, L=I32, LF=I32, D=I32,
                                            VOCAB=I32, NROWS=I32, **{f"t{i}": p for i in range(8)}),
             dict(N0=3, N1=4, N2=5, N3=6, N4=7, N5=8, N6=1, N7=1, NT=6, BLOCK=128, BASE=257, MOD=2 ** 31 - 1)),
            ("hash_bwd", HE._hash_bwd, dict(ids_ptr=I64P, idx_ptr=I64P, g_ptr=p, gbyte_ptr=f, gtab_ptr=f, L=I32, LF=I32,
                                            D=I32, VOCAB=I32, NROWS=I32), dict(NT=6, BLOCK=128)),
            ("pool_fwd", PO._pool_fwd, dict(h_ptr=p, first_ptr=I64P, size_ptr=I64P, out_ptr=p, arg_ptr=I64P, T=I32,
                                            D=I32, P=I32), dict(BLOCK=128)),
            ("pool_bwd", PO._pool_bwd, dict(g_ptr=p, arg_ptr=I64P, gh_ptr=p, T=I32, D=I32, P=I32), dict(BLOCK=128))]
    for by_entropy, in_order in ((False, False), (True, False), (False, True), (True, True)):
        out.append((f"denoise_end by_entropy={by_entropy} in_order={in_order}", S._denoise_end,
                    dict(x_ptr=p, forbid_ptr=f, noisy_ptr=I64P, ids_ptr=I64P, t_ptr=I64P, move_ptr="*u8",
                         knob_ptr="*fp64", nstep_ptr=I64P, filled_ptr=I64P, scores_ptr=f, left_ptr=I64P,
                         **{a: I32 for a in ("L", "V", "s_xb", "s_xl", "s_noisy", "s_ids", "s_fb", "s_fk", "s_sb",
                                             "s_sk", "MASK_ID")}),
                    dict(BY_ENTROPY=by_entropy, IN_ORDER=in_order, BLOCK_L=16, BLOCK_V=512)))
    u8 = "*u8"
    step = dict(ids_ptr=I64P, t_ptr=I64P, sig_ptr=I64P, olog_ptr=u8, ent_ptr=f, forced_ptr=u8, cur_ptr=I64P,
                ws_ptr=u8, x_ptr=p, forbid_ptr=f, keep_ptr=p, pred_ptr=I64P, given_ptr=I64P, plen_ptr=I64P,
                move_ptr=u8, threshold=F32,
                **{a: I32 for a in ("s_ids", "s_olog", "s_ent", "s_forced", "s_xb", "s_xl", "s_keep", "s_pred",
                                    "s_given", "L", "V", "stride", "max_patch")})
    # after a pass (every rule), a draft, and the signal alone (no logits: at one dtype)
    variants = [(r, True, True) for r in S.RULES] + [("global", True, False)]
    variants += [("global", False, True)] * (dt == "bf16")
    out += [(f"step_end {rule} advance={adv} signal={sig}", S._step_end, step,
             dict(RULE=S.RULES.index(rule), ADVANCE=adv, SIGNAL=sig, BLOCK_V=512)) for rule, adv, sig in variants]
    ints = {a: I32 for a in ("sqb", "sqh", "sqm", "skb", "skh", "skn", "svb", "svh", "svn", "sob", "soh", "som", "smq",
                             "smk", "H", "LQ", "LK", "HD", "WINDOW")}
    common = dict(Q=p, K=p, V=p, LSE=f, scale=F32, **{a: I64P for a in ("QPOS", "QLIM", "QBLK", "KPOS", "KBLK")},
                  **ints)
    for hd in head_dims:
        c = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=hd, DOT_FP32=dt == "fp32")
        out += [(f"attn_fwd hd={hd}", A._attn_fwd, dict(O=p, **common), c),
                (f"attn_bwd_dkdv hd={hd}", A._attn_bwd_dkdv, dict(DO=p, DELTA=f, DK=p, DV=p, **common), c),
                (f"attn_bwd_dq hd={hd}", A._attn_bwd_dq, dict(DO=p, DELTA=f, DQ=p, **common), c)]
    return out


def check(arch: int = 90, dtypes=("fp32", "bf16"), head_dims=(32, 64, 128)) -> list[dict]:
    """Compile every spec; returns one row per kernel (ok, seconds, shared bytes or the error)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    from ._triton import HAS_TRITON, MISSING  # not from the package, which imports this module (a cycle)

    if not HAS_TRITON:
        raise RuntimeError(MISSING)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as tcompile

    rows = []
    for dt in dtypes:
        for name, fn, sig, consts in specs(dt, head_dims):
            full = {a: "constexpr" if a in consts else sig[a] for a in fn.arg_names}
            t0 = time.time()
            try:
                k = tcompile(ASTSource(fn, full, consts), target=GPUTarget("cuda", arch, 32))
                rows.append({"kernel": name, "dtype": dt, "ok": True, "seconds": round(time.time() - t0, 1),
                             "shared_bytes": int(k.metadata.shared)})
            except Exception as e:  # report every failure, keep going
                rows.append({"kernel": name, "dtype": dt, "ok": False, "error": f"{type(e).__name__}: {e}"[:2000]})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bltlab.kernels.compile_check", description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (default: 90, H100)")
    p.add_argument("--quick", action="store_true", help="bf16 and head dim 32 only (seconds instead of minutes)")
    args = p.parse_args(argv)
    try:
        rows = check(args.arch, ("bf16",) if args.quick else ("fp32", "bf16"), (32,) if args.quick else (32, 64, 128))
    except RuntimeError as e:  # TRITON_INTERPRET set, or no Triton
        sys.exit(f"error: {e}")
    for r in rows:
        print(f"{'OK  ' if r['ok'] else 'FAIL'} {r['kernel']:<44} {r['dtype']:<5} "
              + (f"{r['seconds']:>5.1f}s shared {r['shared_bytes']} B" if r["ok"] else r["error"]))
    bad = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - bad}/{len(rows)} kernels compiled for sm_{args.arch}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
