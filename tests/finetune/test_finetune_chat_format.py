"""Fine-tuning in a named chat format: ``--chat-format llava-v1`` / ``protocol: official``."""

import pytest
from ft_data import make_train_set

from presel.errors import PreselError
from presel.finetune.train import FinetuneConfig, finetune

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

FAST = dict(lora_r=8, lora_alpha=16, lr=5e-3, projector_lr=1e-3, batch_size=3, save_every_steps=0, log_every=0,
            max_length=None, warmup_ratio=0.0, max_steps=2)


def test_official_trains_in_llava_v1(tiny_llava, tmp_path):
    import json

    data = make_train_set(tmp_path / "data")
    own = finetune(data, tiny_llava, tmp_path / "own", FinetuneConfig(**FAST))
    v1 = finetune(data, tiny_llava, tmp_path / "v1", FinetuneConfig(**FAST, protocol="official"))
    a = json.loads((own / "summary.json").read_text())
    b = json.loads((v1 / "summary.json").read_text())
    assert a["chat_format"] is None and b["chat_format"] == "llava-v1"
    assert b["tokens"] > a["tokens"]  # the Vicuna system prompt on every sample


def test_dataset_renders_llava_v1(tiny_llava, tmp_path):
    from presel.finetune.data import ConversationDataset, load_train_data
    from presel.vlm.load import load_vlm
    from presel.vlm.render import with_chat_format

    _, processor = load_vlm(tiny_llava, dtype="fp32", device="cpu")
    ds = ConversationDataset(load_train_data(make_train_set(tmp_path / "d")), with_chat_format(processor, "llava-v1"))
    text = processor.tokenizer.decode(ds[(0, False)].input_ids)
    assert text.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert " USER: <image>" in text and " ASSISTANT: " in text


def test_bad_chat_format():
    with pytest.raises(PreselError, match="chat_format='chatml'"):
        FinetuneConfig(chat_format="chatml")


def test_cli_flags(tiny_llava, tmp_path):
    import json

    from presel.cli import main

    data = make_train_set(tmp_path / "data", n=4)
    for i, (flags, want) in enumerate(((["--protocol", "official"], "llava-v1"), (["--chat-format", "llava-v1"], "llava-v1"), ([], None))):
        out = tmp_path / f"o{i}"
        assert main(["finetune", "--data", str(data), "--model", str(tiny_llava), "--out", str(out), "--lora-r", "4",
                     "--lora-alpha", "8", "--batch-size", "2", "--max-steps", "1", "--save-every", "0",
                     "--log-every", "0", "--device", "cpu", "--dtype", "fp32", *flags]) == 0
        assert json.loads((out / "summary.json").read_text())["chat_format"] == want
