"""TRL's GRPOTrainer on the PLUS-shaped workload — run by bench/grpo_vs_trl.py in TRL's own environment.

    bench/.trl-venv/bin/python bench/trl_grpo.py SPEC.json OUT.json

TRL is a peer to compare with, not a project dependency: this file imports only TRL's stack (torch,
transformers, datasets, trl) and bench/text_reward.py, never rlhf_cluster. SPEC (written by
grpo_vs_trl.py) fixes the workload both sides run: model path, the chat prompts (and the token ids
our side sends, to check that TRL's chat template yields the same ones), contexts per step, samples
per context, summary length, KL coefficient, learning rate, optimizer steps. OUT: wall seconds per
optimizer step (TrainerCallback on_step_begin → on_step_end) and the generation / scoring share.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import TrainerCallback  # noqa: E402  (TRL's environment: this file never runs in .venv)


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from text_reward import trl_reward
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], local_files_only=True)
    tokenizer.padding_side = "left"
    ids = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for m in spec["messages"]
    ]
    same_tokens = ids == spec["prompt_token_ids"]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, local_files_only=True)
    per_step = spec["contexts_per_step"] * spec["n_samples"]
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            use_cpu=True,
            seed=spec["seed"],
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            max_steps=spec["steps"],
            per_device_train_batch_size=per_step,
            gradient_accumulation_steps=1,
            num_generations=spec["n_samples"],
            steps_per_generation=1,
            num_iterations=1,
            max_completion_length=spec["max_new_tokens"],
            temperature=spec["temperature"],
            top_p=1.0,
            beta=spec["kl_coef"],
            epsilon=spec["clip_eps"],
            learning_rate=spec["lr"],
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=spec["grad_clip"],
            dataloader_num_workers=0,
            disable_tqdm=True,
            # TRL's defaults changed to run what ours runs: fp32, no activation checkpointing, our data order
            **{
                "bf16": False,
                "gradient_checkpointing": False,
                "shuffle_dataset": False,
                **spec.get("trl_overrides", {}),
            },
        )
        timer = StepTimer()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=trl_reward,
            args=args,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list([{"prompt": m} for m in spec["messages"]]),
            callbacks=[timer],
        )
        _time_method(trainer, "_generate", timer.generate)
        _time_method(trainer, "_generate_and_score_completions", timer.generate_and_score)
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    result = {
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "torch_threads": torch.get_num_threads(),
        "prompt_tokens_match_ours": same_tokens,
        "prompt_tokens_mean": sum(map(len, ids)) / len(ids),
        "step_s": timer.steps,
        "generate_s": timer.generate,
        "generate_and_score_s": timer.generate_and_score,
        "completion_tokens_mean": [h.get("completions/mean_length") for h in trainer.state.log_history if "loss" in h],
        "train_wall_s": total,
    }
    Path(out_path).write_text(json.dumps(result, indent=2))


class StepTimer(TrainerCallback):
    """Per optimizer step: wall seconds, and the seconds spent generating / generating + scoring inside it."""

    def __init__(self):
        self.steps, self.generate, self.generate_and_score, self._t0 = [], [], [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self._t0)


def _time_method(obj, name: str, into: list) -> None:
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        into.append(time.perf_counter() - t0)
        return out

    setattr(obj, name, timed)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1], sys.argv[2])
