"""`rlpost` command line: preprocess data, resolve configs, convert models."""

from __future__ import annotations

import argparse
import logging
import sys

import yaml


def _preprocess_gsm8k(args: argparse.Namespace) -> None:
    from rlpost.data.preprocess import gsm8k

    if args.input or args.output:
        if not (args.input and args.output):
            raise SystemExit("rlpost preprocess gsm8k: --input and --output go together")
        n = gsm8k.convert_file(args.input, args.output, args.split, args.multiturn)
        print(f"wrote {n} rows to {args.output}")
        return
    train, test = gsm8k.build_default(args.out_dir, args.train_size, args.seed, args.multiturn)
    print(f"wrote {args.train_size} GSM-Symbolic training rows to {train} and the GSM8K test set to {test}")


def _preprocess_arithmetic(args: argparse.Namespace) -> None:
    from rlpost.data.preprocess import arithmetic

    train, test = arithmetic.build_default(args.out_dir, args.train_size, args.test_size, args.seed)
    print(f"wrote {args.train_size} training rows to {train} and {args.test_size} held-out rows to {test}")


def _preprocess_search_r1(args: argparse.Namespace) -> None:
    from rlpost.data.preprocess import search_r1

    paths, n = search_r1.build_default(args.out_dir, args.test_fraction)
    print(f"corpus: {n.documents} Wikipedia summaries -> {paths['corpus']}")
    print(f"FanOutQA dev sub-questions: {n.sub_questions}; evidence page in the corpus: {n.page_in_corpus}; "
          f"answer in that page's summary: {n.answer_in_page} ({n.questions} distinct questions)")
    print(f"articles with a description of their own: {n.description_questions} questions (which article is it?)")
    print(f"train: {n.train} questions over {n.train_pages} pages -> {paths['train']}")
    print(f"test: {n.test} questions over {n.test_pages} other pages -> {paths['test']}")


def _preprocess_geometry3k(args: argparse.Namespace) -> None:
    from rlpost.data.preprocess import geometry3k

    train, test = geometry3k.build_default(args.out_dir, args.train_size, args.test_size, args.seed, args.multiturn)
    print(f"wrote {args.train_size} drawn geometry problems to {train} and {args.test_size} held-out ones to {test}")


def _generated_splits(parser: argparse.ArgumentParser, out_dir: str) -> None:
    """The options of a generated train / held-out pair."""
    parser.add_argument("--out-dir", default=out_dir, help="where train.parquet and test.parquet go")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)


def _recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """A recipe YAML or Hydra's --config-path/--config-name (a verl experiment YAML), and the overrides: verl's run
    scripts pass no recipe, only key=value, +key=value and ~key."""
    from rlpost.config import ConfigError
    from rlpost.config.verl import experiment_file

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and ("=" in recipe or recipe.startswith(("+", "~"))):
        recipe, overrides = None, [recipe, *overrides]
    experiment = experiment_file(args.config_path, args.config_name)
    if experiment is not None:
        if recipe is not None:
            raise ConfigError([f"give a recipe ({recipe}) or --config-name ({args.config_name}), not both"])
        recipe = str(experiment)
    return recipe, overrides


def _config_args(parser: argparse.ArgumentParser, recipe_help: str) -> None:
    parser.add_argument("recipe", nargs="?", help=recipe_help)
    parser.add_argument("overrides", nargs="*", help="section.key=value; verl's keys and Hydra's +key=value and ~key "
                                                     "are read too")
    parser.add_argument("--config-path", "-cp", default=None, help="Hydra's: the directory of --config-name")
    parser.add_argument("--config-name", "-cn", default=None, help="Hydra's: a verl experiment YAML (defaults: "
                                                                   "[ppo_trainer, _self_]) in --config-path")


def _config(args: argparse.Namespace) -> None:
    from rlpost.config import config_to_dict, run_dir, save_config
    from rlpost.config.loader import load_config_explained

    recipe, overrides = _recipe_and_overrides(args)
    cfg, translation = load_config_explained(recipe, overrides, check_files=not args.no_check_files)
    if args.write:
        print(f"wrote {save_config(cfg, run_dir(cfg) / 'config.yaml')}")
    else:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    if args.from_verl:
        table = translation.table()
        print("# verl keys rlpost ignores or honours differently:\n" + (
            "\n".join("#" + line for line in table.splitlines()) if table else "#   none"))


def _train(args: argparse.Namespace) -> None:
    from rlpost.cluster.worker_group import WorkerDied
    from rlpost.config import run_dir
    from rlpost.config.loader import load_config_explained
    from rlpost.run_log import driver_logging
    from rlpost.trainer.ppo import train

    recipe, overrides = _recipe_and_overrides(args)
    cfg, translation = load_config_explained(recipe, overrides)
    driver_logging(run_dir(cfg))
    if translation.table():
        logging.getLogger("rlpost").warning("verl keys rlpost ignores or honours differently:\n%s",
                                            translation.table())
    try:
        train(cfg)
    except WorkerDied as e:
        raise SystemExit(f"rlpost: {e}; the last checkpoint is intact, resume with trainer.resume=auto") from e


def _eval(args: argparse.Namespace) -> None:
    import dataclasses

    from tqdm import tqdm

    from rlpost.config import load_config
    from rlpost.trainer.evaluate import evaluate, write

    cfg = load_config(args.recipe, args.overrides, check_files=False)
    d, s = cfg.data, cfg.rollout.val_sampling
    s = dataclasses.replace(s, n=args.n if args.n is not None else s.n,
                            temperature=args.temperature if args.temperature is not None else s.temperature)
    cfg = dataclasses.replace(
        cfg, rollout=dataclasses.replace(cfg.rollout, val_sampling=s),
        data=dataclasses.replace(d, val_files=args.data, val_max_samples=args.max_samples or d.val_max_samples))
    result = evaluate(cfg, args.model, args.data,
                      progress=lambda desc, total: tqdm(total=total, desc=desc, dynamic_ncols=True))
    for key, value in result["metrics"].items():
        print(f"{key} = {value:.4f}")
    if args.out:
        print(f"wrote {write(result, args.out)}")


def _plot(args: argparse.Namespace) -> None:
    from rlpost.trainer.plots import plot_run

    for path in plot_run(args.run_dir):
        print(f"wrote {path}")


def _wait_nodes(args: argparse.Namespace) -> None:
    from rlpost.cluster.resources import wait_for_nodes

    wait_for_nodes(args.address, args.nodes, args.timeout)


def _convert_gguf(args: argparse.Namespace) -> None:
    from rlpost.models.gguf import convert_gguf

    print(f"wrote {convert_gguf(args.input, args.output)}")


def _convert_asset(args: argparse.Namespace) -> None:
    from rlpost.models.hf import resolve_model_path

    print(resolve_model_path(args.name))


def _serve_engine(args: argparse.Namespace) -> None:
    from rlpost.models.hf import resolve_model_path
    from rlpost.rollout.engine.engine import Engine
    from rlpost.rollout.engine.server import serve

    engine = Engine(resolve_model_path(args.model_path), dtype=args.dtype, max_running=args.max_running_requests,
                    context_length=args.context_length, max_prefill_tokens=args.max_prefill_tokens,
                    prefix_cache_tokens=args.prefix_cache_tokens, seed=args.random_seed,
                    deterministic=args.enable_deterministic_inference)
    print(f"rlpost engine serving {args.model_path} on http://{args.host}:{args.port}", flush=True)
    serve(engine, args.host, args.port, args.served_model_name)


def _serve_sandbox(args: argparse.Namespace) -> None:
    from rlpost.services.sandbox.isolation import Sandbox, SandboxSettings
    from rlpost.services.sandbox.server import serve

    settings = SandboxSettings(python=args.python, default_memory_mb=args.memory_mb, max_memory_mb=args.max_memory_mb,
                               max_run_timeout_s=args.max_run_timeout, max_output_bytes=args.max_output_bytes,
                               tmp_size_mb=args.tmp_size_mb, max_processes=args.max_processes,
                               unprivileged_uid=args.uid, ro_binds=tuple(args.ro_bind), cgroups=args.cgroups)
    serve(Sandbox(settings), args.host, args.port, args.max_concurrency)


def _serve_retrieval(args: argparse.Namespace) -> None:
    from rlpost.services.retrieval.index import open_index
    from rlpost.services.retrieval.server import serve

    serve(open_index(args.corpus, args.retriever, rebuild=args.rebuild), args.host, args.port, args.topk)


def build_parser() -> argparse.ArgumentParser:
    from rlpost.models.gguf import MODEL_ASSETS

    parser = argparse.ArgumentParser(prog="rlpost", description="RL post-training of LLMs (PPO/GRPO).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("preprocess", help="convert a dataset into rlpost's (verl's) row schema")
    pre_sub = pre.add_subparsers(dest="task", required=True)
    g = pre_sub.add_parser("gsm8k", help="GSM8K format -> parquet; without --input, build the default offline "
                                         "train (GSM-Symbolic) and test (GSM8K) sets")
    g.add_argument("--input", help="GSM8K-format file (.jsonl/.json/.parquet with question, answer)")
    g.add_argument("--output", help="output file (.parquet or .jsonl)")
    g.add_argument("--split", default="train", help="split name stored in extra_info (with --input)")
    g.add_argument("--out-dir", default="data/gsm8k", help="where train.parquet and test.parquet go")
    g.add_argument("--train-size", type=int, default=2000, help="GSM-Symbolic problems to generate")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--multiturn", action="store_true", help="add the system prompt of the tool-using recipe")
    g.set_defaults(func=_preprocess_gsm8k)
    a = pre_sub.add_parser("arithmetic", help="the quickstart's arithmetic chains (reasoning-gym chain_sum), train "
                                              "and held-out test sets that share no question")
    _generated_splits(a, "data/arithmetic")
    a.set_defaults(func=_preprocess_arithmetic)
    r = pre_sub.add_parser("search-r1", help="Search-R1-style retrieval QA offline: a Wikipedia corpus for the "
                                             "retrieval service, and FanOutQA questions it answers, split by page")
    r.add_argument("--out-dir", default="data/search_r1", help="where corpus.jsonl, train.parquet and test.parquet go")
    r.add_argument("--test-fraction", type=float, default=0.2, help="share of the questions held out")
    r.set_defaults(func=_preprocess_search_r1)
    geo = pre_sub.add_parser("geometry3k", help="geometry problems drawn offline (figure + 'Find x.'), in verl's "
                                                "geo3k row format with the image embedded; train and held-out sets")
    _generated_splits(geo, "data/geometry3k")
    geo.add_argument("--multiturn", action="store_true", help="add the system prompt and tools_kwargs of the "
                                                              "calc_geo3k_reward tool recipe")
    geo.set_defaults(func=_preprocess_geometry3k)

    c = sub.add_parser("config", help="resolve and validate a recipe; print it or write it to the run directory")
    _config_args(c, "recipe YAML (omit for the defaults alone)")
    c.add_argument("--write", action="store_true", help="write config.yaml into the run directory")
    c.add_argument("--no-check-files", action="store_true", help="skip checks of data, model and other paths")
    c.add_argument("--from-verl", action="store_true", help="also list the verl keys given that rlpost ignores or "
                                                            "honours differently, with the reasons")
    c.set_defaults(func=_config)

    t = sub.add_parser("train", help="run PPO/GRPO from a recipe (or a verl command line)")
    _config_args(t, "recipe YAML (omit with --config-name or verl-style overrides)")
    t.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="accuracy of a model on a dataset, through the trainer's validation code",
                        usage="rlpost eval --data FILE [options] MODEL [section.key=value ...]")
    ev.add_argument("model", help="HF directory, model asset name, checkpoint directory or run directory (its "
                                  "latest checkpoint)")
    ev.add_argument("--data", action="append", required=True, help="dataset file in verl's schema (parquet/jsonl); "
                                                                   "repeat for several")
    ev.add_argument("--recipe", default=None, help="recipe whose data, reward and sampling settings apply")
    ev.add_argument("--n", type=int, default=None, help="samples per prompt (pass@n with n > 1; default: the "
                                                        "recipe's rollout.val_sampling.n)")
    ev.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the recipe's)")
    ev.add_argument("--max-samples", type=int, default=None, help="evaluate the first N prompts only")
    ev.add_argument("--out", default=None, help="write the result as JSON here")
    ev.add_argument("overrides", nargs="*", help="section.key=value overrides")
    ev.set_defaults(func=_eval)

    pl = sub.add_parser("plot", help="PNG curves of a run (reward, held-out accuracy, length, entropy, KL, timing)")
    pl.add_argument("run_dir", help="the run directory (holds metrics.jsonl)")
    pl.set_defaults(func=_plot)

    clu = sub.add_parser("cluster", help="Ray cluster helpers for launch scripts")
    clu_sub = clu.add_subparsers(dest="action", required=True)
    wait = clu_sub.add_parser("wait", help="wait until a Ray cluster has this many live nodes")
    wait.add_argument("--nodes", type=int, required=True)
    wait.add_argument("--address", default=None, help="default: RAY_ADDRESS")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds")
    wait.set_defaults(func=_wait_nodes)

    conv = sub.add_parser("convert", help="model conversions")
    conv_sub = conv.add_subparsers(dest="kind", required=True)
    gg = conv_sub.add_parser("gguf", help="GGUF file -> Hugging Face directory (fp32 safetensors)")
    gg.add_argument("--input", required=True)
    gg.add_argument("--output", required=True)
    gg.set_defaults(func=_convert_gguf)
    asset = conv_sub.add_parser("asset", help="convert a named model asset into the cache and print its path")
    asset.add_argument("name", choices=sorted(MODEL_ASSETS))
    asset.set_defaults(func=_convert_asset)

    serve = sub.add_parser("serve", help="run a service")
    serve_sub = serve.add_subparsers(dest="service", required=True)
    # flag names follow `python -m sglang.launch_server` so launch code builds either command the same way
    eng = serve_sub.add_parser("engine", help="the embedded generation engine behind SGLang's HTTP API")
    eng.add_argument("--model-path", required=True, help="HF directory or model asset name")
    eng.add_argument("--host", default="127.0.0.1")
    eng.add_argument("--port", type=int, default=30000)
    eng.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    eng.add_argument("--max-running-requests", type=int, default=64)
    eng.add_argument("--context-length", type=int, default=None)
    eng.add_argument("--max-prefill-tokens", type=int, default=4096)
    eng.add_argument("--prefix-cache-tokens", type=int, default=16384,
                     help="token budget for keys/values kept for multi-turn prefix reuse (0 disables)")
    eng.add_argument("--random-seed", type=int, default=0)
    eng.add_argument("--enable-deterministic-inference", action="store_true",
                     help="honour each request's sampling_seed, as SGLang does only with this flag")
    eng.add_argument("--served-model-name", default=None)
    eng.set_defaults(func=_serve_engine)

    sbx = serve_sub.add_parser("sandbox", help="Sandbox Fusion's /run_code API for Python and bash, each run isolated "
                                              "with bubblewrap")
    sbx.add_argument("--host", default="127.0.0.1", help="anyone who can reach this address can run code")
    sbx.add_argument("--port", type=int, default=8080)
    sbx.add_argument("--max-concurrency", type=int, default=8, help="runs at once; the rest wait")
    sbx.add_argument("--memory-mb", type=int, default=1024, help="address-space limit when a request sends -1")
    sbx.add_argument("--max-memory-mb", type=int, default=8192, help="the most a request may ask for")
    sbx.add_argument("--max-run-timeout", type=float, default=300.0,
                     help="the longest run_timeout a request may ask for")
    sbx.add_argument("--max-output-bytes", type=int, default=1 << 20, help="per stream; past it the run is killed")
    sbx.add_argument("--tmp-size-mb", type=int, default=64, help="size of each run's private /tmp")
    sbx.add_argument("--max-processes", type=int, default=64, help="processes and threads per run")
    sbx.add_argument("--python", default="/usr/bin/python3", help="interpreter inside the sandbox")
    sbx.add_argument("--ro-bind", action="append", default=[], metavar="PATH",
                     help="also show this host path, read-only (e.g. a venv with numpy); repeatable")
    sbx.add_argument("--uid", type=int, default=65534,
                     help="unprivileged uid that a server started as root runs code as")
    sbx.add_argument("--cgroups", default="auto", choices=["auto", "require", "off"],
                     help="a memory + pids cgroup per run, bounding the run as a whole (auto: where the host allows "
                          "it, saying so at start-up)")
    sbx.set_defaults(func=_serve_sandbox)

    ret = serve_sub.add_parser("retrieval", help="Search-R1's /retrieve API over a JSONL corpus; the index is built "
                                                 "once and saved beside the corpus")
    ret.add_argument("--corpus", required=True, help='JSONL, one {"id": str, "contents": str} a line (Search-R1\'s '
                                                     'format: the title in double quotes on the first line)')
    ret.add_argument("--retriever", default="bm25", choices=["bm25", "dense"],
                     help="bm25: sparse (bm25s); dense: all-MiniLM-L6-v2 embeddings in a faiss flat index")
    ret.add_argument("--topk", type=int, default=3, help="documents a query gets when the request's topk is null")
    ret.add_argument("--host", default="127.0.0.1")
    ret.add_argument("--port", type=int, default=8000)
    ret.add_argument("--rebuild", action="store_true", help="build the index even if a current one is saved")
    ret.set_defaults(func=_serve_retrieval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlpost.config import ConfigError
    from rlpost.services.sandbox.isolation import SandboxUnavailable

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, SandboxUnavailable, TimeoutError) as e:
        print(f"rlpost: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
