"""Tiny random-weight Omni checkpoints, built fully offline, one builder module per model family.

:func:`make_tiny_model` writes a directory laid out like the family's hub checkpoint (full config, safetensors weights
of every submodule, tokenizer, processor, chat template); it is loaded by the same code as the real checkpoint
(:func:`verl_modality.models.omni.load_thinker`, :func:`verl_modality.models.omni.load_omni_processor`). The
tokenizer is a byte-level BPE trained here on a small built-in corpus, followed by the family's added tokens in Qwen's
order, so token ids keep the hub layout's shape. A family's builder module (``tiny/<family>.py``) provides
``ADDED_TOKENS``, ``TOKENIZER_NAMED_TOKENS``, ``RESERVED_TAIL``, ``MIN_PIXELS`` / ``MAX_PIXELS``, ``tiny_config``,
``build_processor`` and ``write_checkpoint``.
"""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path
from typing import Any

#: family name -> its tiny builder module
BUILDERS = {
    "qwen2_5_omni": "verl_modality.models.tiny.qwen2_5_omni",
    "qwen3_omni": "verl_modality.models.tiny.qwen3_omni",
}
DEFAULT_FAMILY = "qwen2_5_omni"


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------
_GENERIC_LINES = """\
The quick brown fox jumps over the lazy dog.
A small model is trained on a tiny corpus so that every test runs in a few seconds.
Please read the question carefully and choose the best option.
Think step by step, then give the final answer.
She opened the window and listened to the rain falling on the roof.
The train leaves the station at seven o'clock in the morning.
We watched the video twice before we wrote down what we saw.
He played a short melody on the piano, first slowly and then faster.
Listen to the audio clip and tell me what you hear.
The weather is cold today, but tomorrow it will be warm and sunny.
There are three apples, two bananas and one orange on the table.
Numbers like 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100 and 2024 appear in many questions.
The answer is not in the list, so none of the options is correct.
It is impossible to tell from the information given.
The speaker says hello, then thanks everyone for coming.
Subtitles show the words that people say in the video.
A caption describes the scene: a cat sits next to a red ball.
Which of the following statements is true?
How many times does the sound repeat?
What is the main colour of the object in the middle of the frame?
Is the second tone higher or lower than the first one?
The sound gets louder, then quieter, and finally stops.
I think the correct choice is the one that matches both the picture and the sound.
Answer with the letter of the option only.
Could you describe what happens at the beginning, in the middle and at the end?
The dog barks loudly while the bird sings quietly in the tree.
Every morning the farmer feeds the cows, the sheep, the horses and the chickens.
Hello, how are you? I am fine, thank you!
Yes. No. Maybe. Sometimes. Always. Never.
(a) first, (b) second, (c) third, (d) fourth; "quoted text" and 'single quotes' too.
Email: test@example.com, website: https://example.com/path?query=1#top
Tabs\tand multiple   spaces, new lines, and punctuation: ! ? . , ; : - _ + = * / \\ | < > [ ] { } ( ) # $ % & @ ^ ~ `
"""

_COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "black", "white", "pink", "brown", "grey", "gray")
_SHAPES = ("square", "circle", "triangle", "star", "ball", "box", "line", "dot")
_ANIMALS = ("dog", "cat", "cow", "bird", "sheep", "horse", "duck", "frog", "lion", "owl", "pig", "chicken")
_SOUNDS = ("beep", "beeps", "tone", "tones", "chirp", "click", "whistle", "buzz", "bark", "meow", "moo", "quack")
_PITCH = ("high", "low", "rising", "falling", "steady", "loud", "quiet", "short", "long", "higher", "lower")
_COUNTS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "zero", "once", "twice")
_WORDS = (
    "audio video subtitle subtitles caption speech transcript frame frames picture image clip sound sounds noise "
    "silence silent blank pitch frequency hertz Hz kHz volume loudness duration second seconds minute beginning end "
    "middle left right top bottom background foreground colour color colours colors shape shapes animal animals "
    "question answer option options choice correct incorrect wrong none above below cannot determined missing "
    "modality modalities stream visible audible shown heard seen says said spoken word words text reads display "
    "think reasoning because therefore first then finally both neither either only also count number how many which "
    "what where when who why is are was were does do did can could would should the a an of in on at to for with"
).split()


def tokenizer_corpus() -> list[str]:
    """The built-in training corpus: generic English plus the words of a small audio/video QA set."""
    lines = [line for line in _GENERIC_LINES.splitlines() if line]
    for colour, shape in itertools.product(_COLOURS, _SHAPES):
        lines.append(f"What colour is the {shape}? The {shape} is {colour}. A {colour} {shape} appears on screen.")
    for count, sound, pitch in zip(itertools.cycle(_COUNTS), _SOUNDS * 3, _PITCH * 4):
        lines.append(f"How many {sound}s do you hear? I hear {count} {pitch} {sound}s. The {sound} pitch is {pitch}.")
    for animal, sound in zip(_ANIMALS, itertools.cycle(_SOUNDS)):
        lines.append(f"Which animal makes this sound? Options: A. {animal} B. {_ANIMALS[-1]} C. none of the above.")
        lines.append(f"The {animal} makes a {sound} sound. The subtitle says: the {animal} is here.")
    letters = ("A", "B", "C", "D")
    for i, (colour, animal) in enumerate(zip(itertools.cycle(_COLOURS), _ANIMALS * 2)):
        answer = letters[i % 4]
        lines.append(
            f"Question: Which option matches the video? A. a {colour} {animal} B. a beep C. a high tone D. none. "
            f"<think>The video shows a {colour} {animal}.</think> <answer>{answer}</answer>"
        )
    for i in range(60):
        lines.append(" ".join(_WORDS[(i * 7 + k * 13) % len(_WORDS)] for k in range(12)) + ".")
    # Chat turns, so that role names become single tokens as in Qwen's vocabulary.
    for i, line in enumerate(lines[:120]):
        lines.append(f"system\nYou are a helpful assistant.\nuser\n{line}\nassistant\nThe answer is {letters[i % 4]}.")
    return lines


def build_tokenizer(bpe_vocab_size: int, spec: Any) -> Any:
    """Train a byte-level BPE with Qwen2's pre-tokenizer on :func:`tokenizer_corpus` and add the family's tokens
    (``spec``: a tiny family module, see :func:`make_tiny_model`)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in spec.ADDED_TOKENS])
    return Qwen2Tokenizer(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        errors="replace",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        extra_special_tokens=[text for text, special in spec.ADDED_TOKENS if special],
        # The Omni processors' __call__ resize videos to its class default (>= 128*28*28 pixels) unless told
        # otherwise; values in the tokenizer's init kwargs are the only saved defaults it reads for every modality.
        min_pixels=spec.MIN_PIXELS,
        max_pixels=spec.MAX_PIXELS,
        **spec.TOKENIZER_NAMED_TOKENS,
    )


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------------------------------------
def builder(family: str) -> Any:
    """The tiny builder module of ``family``; an unknown name is an error naming the known ones."""
    if family not in BUILDERS:
        raise ValueError(f"unknown model family {family!r}: tiny checkpoints exist for {', '.join(BUILDERS)}")
    return importlib.import_module(BUILDERS[family])


def make_tiny_model(
    out_dir: str | Path, seed: int = 0, vocab_size: int = 1024, overwrite: bool = False, family: str = DEFAULT_FAMILY
) -> Path:
    """Write a tiny random-weight checkpoint of ``family`` (full layout, tokenizer, processor) to ``out_dir``.

    ``vocab_size`` is the number of embedding rows: the BPE gets the rows left after the family's added tokens and
    its reserved tail. The files are a pure function of ``family``, ``seed`` and ``vocab_size``. The directory is
    assembled next to ``out_dir`` and moved into place when complete.
    """
    spec = builder(family)
    out = Path(out_dir)
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{parent} is a file, not a folder: cannot write the model to {out}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a model directory: refusing to replace it")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
        if not (out / "config.json").is_file():
            raise FileExistsError(
                f"refusing to replace {out}: it does not look like a model directory (no config.json)"
            )
    n_added = len(spec.ADDED_TOKENS)
    if vocab_size < 256 + n_added + spec.RESERVED_TAIL + 64:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE plus Qwen's added tokens")
    import torch  # after the checks: torch and transformers take seconds to import

    from verl_modality.models.checkpoint import assembled_dir

    with assembled_dir(out) as tmp:
        tokenizer = build_tokenizer(vocab_size - n_added - spec.RESERVED_TAIL, spec)
        token_ids = {text: tokenizer.convert_tokens_to_ids(text) for text, _ in spec.ADDED_TOKENS}
        for role in ("system", "user", "assistant"):
            role_id = tokenizer.convert_tokens_to_ids(role)
            token_ids[role] = role_id if isinstance(role_id, int) and role_id >= 0 else 0
        config = spec.tiny_config(token_ids, vocab_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            spec.write_checkpoint(tmp, config, token_ids, vocab_size)
        spec.build_processor(tokenizer).save_pretrained(tmp)
    return out
