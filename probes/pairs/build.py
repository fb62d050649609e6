"""Build a model pair: f_old pretrained on a generated world (or a given base), f_new = it fine-tuned."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import platform
import time
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedModel

from probes.data.corpus import Corpus, load_corpus
from probes.files import atomic_path
from probes.hashing import PAIR_FOLDERS, file_checksums, file_sha256
from probes.lm.context import check_document_lengths
from probes.outputs import claim_output
from probes.pairs.evaluate import evaluate_model, evaluate_pair, summary_json
from probes.pairs.presets import Preset, get_preset, pretraining_world, query_lines
from probes.pairs.tokenizer import check_tokenizer, train_tokenizer
from probes.pairs.train import TrainConfig, encode_texts, train

# The reference recipe's fine-tuning of a pretrained base (full-document loss, AdamW, bf16 autocast on a GPU).
BASE_FINETUNE = TrainConfig(epochs=10, lr=2e-5, batch_size=16, weight_decay=0.0)
# What a build writes into its folder (manifest.json last): anything else there is someone else's and is kept.
PAIR_FILES = ("old", "new", "manifest.json")
KIND = "python -m probes.pairs build"  # the kind in its output folder's marker (probes.outputs)
# Bump when the recipe changes in a way that changes the weights: cached default pairs are rebuilt.
RECIPE_VERSION = "1"


def init_new_rows(model: PreTrainedModel, first_new: int, end_new: int, seed: int) -> None:
    """Give rows ``first_new:end_new`` of the input (and untied output) embeddings random directions at the
    median norm of rows ``:first_new``, as the reference recipe initialises added tokens."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        matrices = [model.get_input_embeddings().weight]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not matrices[0]:
            matrices.append(output.weight)
        for weight in matrices:
            median = weight[:first_new].float().norm(dim=-1).median().cpu()
            rows = torch.randn((end_new - first_new, weight.shape[1]), generator=generator)
            rows = rows / rows.norm(dim=-1, keepdim=True) * median
            weight[first_new:end_new] = rows.to(weight.dtype).to(weight.device)


def add_rows(model: PreTrainedModel, first_new: int, end_new: int, seed: int) -> None:
    """Make room for token ids ``first_new:end_new`` (keeping any padded rows a checkpoint already has) and
    initialise them with :func:`init_new_rows`."""
    if end_new > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(end_new, mean_resizing=False)
    init_new_rows(model, first_new, end_new, seed)


def _fmt(acc: dict) -> str:
    return f"base {acc['base']:.1%}, wrapper {acc['wrapper']:.1%}"


def world_accuracy(model, tokenizer, world: Corpus, queried: list[str]) -> dict:
    """f_old's accuracy (inputs 1-20) on the world's functions with query lines and on those known from
    documents only: the second shows whether facts learned from documents transfer to the query format."""
    summary, _ = evaluate_model(model, tokenizer, world, inputs=range(1, 21))
    out = {}
    for group, names in (("queried", set(queried)), ("documents_only", set(world.functions) - set(queried))):
        for base in (True, False):
            accs = [
                a
                for f, a in summary["functions"].items()
                if f in names and world.functions[f].is_base == base
            ]
            if accs:
                out[f"{group}_{'base' if base else 'wrapper'}"] = sum(accs) / len(accs)
    tqdm.write("f_old on its world: " + ", ".join(f"{k} {v:.1%}" for k, v in out.items()))
    return out


def build_pair(
    corpus_path: str | Path,
    out: str | Path,
    *,
    preset: str | Preset = "tiny",
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool | None = None,
) -> dict:
    """Build ``out/old`` (pretrained on a generated world) and ``out/new`` (fine-tuned on the corpus).

    ``out`` is written atomically (see :func:`write_pair`): it appears complete with ``manifest.json`` or
    not at all. ``overwrite`` not None: claim ``out`` for the CLI (see :func:`write_pair`). Returns the
    manifest.
    """
    preset_name = preset if isinstance(preset, str) else "custom"
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    corpus = load_corpus(corpus_path)
    started = time.time()
    torch.manual_seed(seed)
    world_rows, world = pretraining_world(corpus, cfg, seed)
    queries, queried = query_lines(world, cfg, seed)
    new_tokens = [t for t in corpus.function_tokens if t not in set(world.function_tokens)]
    tokenizer = train_tokenizer(
        [*corpus.texts, *world.texts, *queries], world.function_tokens, new_tokens, vocab_size=cfg.bpe_vocab
    )
    check_tokenizer(tokenizer, [*world.function_tokens, *new_tokens])
    first_new = len(tokenizer) - len(new_tokens)
    ids = dict(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    check_document_lengths(corpus, tokenizer, cfg.model_config(first_new, **ids))  # before any training
    model = LlamaForCausalLM(cfg.model_config(first_new, **ids)).to(device)
    pre_seqs = encode_texts(tokenizer, [*world.texts, *queries])
    pre_curve = train(model, pre_seqs, cfg.pretrain, pad_id=ids["pad"], seed=seed, desc="pretrain f_old")
    world_eval = world_accuracy(model, tokenizer, world, queried)
    add_rows(model, first_new, len(tokenizer), seed)
    old = copy.deepcopy(model)
    fine_curve, progress = _finetune(model, tokenizer, corpus, cfg, ids["pad"], seed)
    manifest = {
        "kind": "scratch",
        "preset": preset_name,
        "preset_config": dataclasses.asdict(cfg),
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "corpus": {"path": str(Path(corpus_path).resolve()), "sha256": file_sha256(corpus_path)},
        "world": {
            "sha256": hashlib.sha256(json.dumps(world_rows).encode()).hexdigest(),
            "documents": len(world_rows),
            "query_lines": len(queries),
            "functions": len(world.functions),
            "queried_functions": queried,
            "f_old_accuracy": world_eval,
        },
        "tokenizer": {"size": len(tokenizer), "new_tokens": new_tokens},
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss": {"pretrain": pre_curve, "finetune": fine_curve},
        "finetune_progress": progress,
    }
    return _finish(old, model, tokenizer, corpus, manifest, out, started, overwrite)


def _finetune(model, tokenizer, corpus, cfg: Preset, pad_id: int, seed: int) -> tuple[list, list[dict]]:
    """Fine-tune ``model`` into f_new on the corpus (data-order seed ``seed + 1``); returns its loss curve and
    its accuracy on inputs 1-10 after each epoch."""
    progress: list[dict] = []

    def track(epoch: int, loss: float) -> None:
        summary, _ = evaluate_model(model, tokenizer, corpus, inputs=range(1, 11))
        progress.append(
            {"epoch": epoch, "loss": loss, "base": summary["base"], "wrapper": summary["wrapper"]}
        )
        tqdm.write(f"fine-tune epoch {epoch}: loss {loss:.3f}, accuracy (inputs 1-10) {_fmt(progress[-1])}")

    seqs = encode_texts(tokenizer, corpus.texts)
    curve = train(
        model, seqs, cfg.finetune, pad_id=pad_id, seed=seed + 1, desc="fine-tune f_new", on_epoch=track
    )
    return curve, progress


def build_from_base(
    corpus_path: str | Path,
    out: str | Path,
    base: str,
    *,
    finetune: TrainConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool | None = None,
) -> dict:
    """``out/old`` = the Hugging Face causal LM ``base`` with the corpus's function tokens added (untrained
    rows at the median norm); ``out/new`` = that fine-tuned on the corpus (bf16 autocast on a GPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = finetune or BASE_FINETUNE
    corpus = load_corpus(corpus_path)
    started = time.time()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    first_new = len(tokenizer)
    added = [t for t in corpus.function_tokens if t not in tokenizer.get_vocab()]
    tokenizer.add_tokens(added)
    check_tokenizer(tokenizer, corpus.function_tokens)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_document_lengths(corpus, tokenizer, AutoConfig.from_pretrained(base))  # before loading weights
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    if added:
        add_rows(model, first_new, len(tokenizer), seed)
    old = copy.deepcopy(model)
    seqs = encode_texts(tokenizer, corpus.texts)
    curve = train(model, seqs, cfg, pad_id=tokenizer.pad_token_id, seed=seed + 1, desc="fine-tune f_new")
    manifest = {
        "kind": "base",
        "base": base,
        "finetune_config": dataclasses.asdict(cfg),
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "corpus": {"path": str(Path(corpus_path).resolve()), "sha256": file_sha256(corpus_path)},
        "tokenizer": {"size": len(tokenizer), "new_tokens": added},
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss": {"finetune": curve},
    }
    return _finish(old, model, tokenizer, corpus, manifest, out, started, overwrite)


def _finish(
    old, new, tokenizer, corpus: Corpus, manifest: dict, out, started: float, overwrite: bool | None
) -> dict:
    """Evaluate, then write old/, new/ and manifest.json into ``out`` atomically."""
    result = evaluate_pair((old, new, tokenizer), corpus)
    manifest["evaluation"] = summary_json(result)
    manifest["seconds"] = round(time.time() - started, 1)
    manifest["machine"] = {
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "device": str(next(new.parameters()).device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    write_pair(Path(out), old, new, tokenizer, manifest, overwrite)
    return manifest


def write_pair(out: Path, old, new, tokenizer, manifest: dict, overwrite: bool | None = None) -> None:
    """Write old/, new/ and manifest.json (with every weight file's SHA-256 in its ``files``) into ``out``:
    the whole folder atomically when it is missing or empty, else each entry atomically (manifest.json
    removed first, written last) beside the rest. With ``overwrite`` given (the CLI) the folder is claimed
    for `KIND` first and its marker records every file it wrote (`probes.outputs`)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            _write_entries(tmp, old, new, tokenizer, manifest, overwrite)
        return
    _write_entries(out, old, new, tokenizer, manifest, overwrite)


def _write_entries(folder: Path, old, new, tokenizer, manifest: dict, overwrite: bool | None) -> None:
    output = None
    if overwrite is not None:
        settings = {key: manifest[key] for key in ("kind", "preset", "base", "seed") if key in manifest}
        output = claim_output(folder, KIND, PAIR_FILES, overwrite=overwrite, settings=settings)
    (folder / "manifest.json").unlink(missing_ok=True)
    for name, model in (("old", old), ("new", new)):
        with atomic_path(folder / name) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    manifest["files"] = file_checksums(folder, PAIR_FOLDERS)
    with atomic_path(folder / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    if output is not None:
        output.record(*PAIR_FILES)
