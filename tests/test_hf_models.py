"""The hf: backend on tiny random transformers models built offline in tmp folders."""

import pytest

import tokenizers
import torch
import transformers

from longarch.models import hf

WORDS = ("the cat dog bird sat ran on under a mat tree house key value is was red blue green "
         "one two three four five what where who answer question").split()


def _sentences(n=300):
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(5 + i % 7)) for i in range(n)]


def word_tokenizer():
    """A word-level tokenizer over WORDS with [UNK] [PAD] [EOS] [BOS] (ids 0-3), trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_sentences(), trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]", "[BOS]"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                eos_token="[EOS]", bos_token="[BOS]")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def _config(kind, vocab):
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, eos_token_id=2, bos_token_id=3,
                  pad_token_id=1, tie_word_embeddings=False)
    if kind == "llama":
        return transformers.LlamaConfig(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=32, **common)
    if kind == "mamba":
        return transformers.MambaConfig(state_size=8, expand=2, conv_kernel=4, **common)
    if kind == "mamba2":
        return transformers.Mamba2Config(state_size=8, expand=2, conv_kernel=4, num_heads=8, head_dim=8,
                                         n_groups=1, chunk_size=8, **common)
    if kind == "rwkv":
        return transformers.RwkvConfig(attention_hidden_size=32, intermediate_size=64, context_length=64,
                                       **common)
    if kind == "recurrent_gemma":
        return transformers.RecurrentGemmaConfig(intermediate_size=64, num_attention_heads=4, num_key_value_heads=1,
                                                 lru_width=32, attention_window_size=16, conv1d_width=4,
                                                 block_types=["recurrent", "attention"], logits_soft_cap=30.0,
                                                 **common)
    if kind == "jamba":  # a larger init so the Mamba layer visibly matters next to attention
        return transformers.JambaConfig(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                        num_experts=2, num_experts_per_tok=1, expert_layer_period=2,
                                        expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=1,
                                        mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
                                        initializer_range=0.2, max_position_embeddings=256, **common)
    raise AssertionError(kind)


KINDS = ["llama", "mamba", "mamba2", "rwkv", "recurrent_gemma", "jamba"]


@pytest.fixture(scope="module")
def zoo(tokenizer, tmp_path_factory):
    """kind -> HFModel, each tiny random model saved to a tmp folder and loaded back once."""
    built = {}

    def get(kind):
        if kind not in built:
            torch.manual_seed(0)
            net = transformers.AutoModelForCausalLM.from_config(_config(kind, len(tokenizer)))
            path = tmp_path_factory.mktemp(kind)
            net.save_pretrained(path)
            tokenizer.save_pretrained(path)
            built[kind] = hf.load(f"hf:{path}")
        return built[kind]
    return get


@pytest.fixture(scope="module", params=KINDS)
def model(request, zoo):
    return zoo(request.param)


def _ids(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (n,), generator=g).tolist()


def test_kind_and_declared_length(model):
    expected = {"llama": 32, "rwkv": 64, "jamba": 256, "mamba": None, "mamba2": None, "recurrent_gemma": None}
    assert model.declared_length == expected[model.kind]


@pytest.mark.parametrize("chunk", [5, 7])
def test_chunked_prefill_matches_whole(model, chunk):
    ids = _ids(23, len(model.tokenizer))
    whole = model.next_token_logits(ids)
    chunked = model.next_token_logits(ids, chunk=chunk)
    assert whole.shape == (len(model.tokenizer),)
    assert torch.allclose(whole, chunked, atol=1e-4), (whole - chunked).abs().max()


def test_generate_chunked_equals_whole_and_batches(model):
    vocab = len(model.tokenizer)
    prompts = [_ids(19, vocab, 1), _ids(12, vocab, 2), _ids(19, vocab, 3)]
    whole = model.generate(prompts, max_new_tokens=6)
    chunked = model.generate(prompts, max_new_tokens=6, chunk=5)
    assert whole == chunked
    singly = [model.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert whole == singly
    assert model.generate(prompts, max_new_tokens=6, batch_tokens=1) == whole
    eos = model.eos_ids
    for out in whole:
        assert len(out) == 6 or not set(out) & eos


def test_prompts_of_different_lengths_share_a_padded_batch_where_exact(model, monkeypatch):
    """Left padding with a mask gives each row what it gets alone (the kinds in PADDED_KINDS,
    so they batch mixed lengths); the other kinds are not padded and batch equal lengths only."""
    vocab = len(model.tokenizer)
    prompts = [_ids(n, vocab, seed) for n, seed in ((30, 11), (22, 12), (27, 13), (22, 14), (9, 15))]
    alone = [model.generate([p], max_new_tokens=7)[0] for p in prompts]
    batches = []
    original = model._generate_batch
    monkeypatch.setattr(model, "_generate_batch", lambda ps, *a: batches.append(len(ps)) or original(ps, *a))
    assert model.generate(prompts, max_new_tokens=7, batch_tokens=10_000) == alone
    if model.kind in hf.PADDED_KINDS:
        assert batches == [5]
    else:
        assert batches == [1] * 5 if model.kind in hf.UNBATCHED_KINDS else sorted(batches) == [1, 1, 1, 2]
    batches.clear()
    assert model.generate(prompts, max_new_tokens=7, batch_tokens=60) == alone  # 2 x 30 padded tokens at most
    assert max(batches) <= 2


def test_generate_stops_at_eos(model, monkeypatch):
    prompt = _ids(15, len(model.tokenizer), 4)
    first = model.generate([prompt], max_new_tokens=4)[0]
    assert len(first) == 4
    monkeypatch.setattr(model.model.generation_config, "eos_token_id", first[1])
    assert model.generate([prompt], max_new_tokens=4)[0] == first[:first.index(first[1])]
    assert model.generate([prompt], max_new_tokens=0) == [[]]


def test_prompt_beyond_declared_length_is_run_not_cut(zoo):
    llama = zoo("llama")
    text = " ".join(WORDS[i % len(WORDS)] for i in range(48))
    ids = llama.prompt(text)
    assert len(ids) == 48 > llama.declared_length and llama.beyond_training(len(ids))
    assert not llama.beyond_training(32)
    assert len(llama.generate([ids], max_new_tokens=3)[0]) == 3
    whole = llama.next_token_logits(ids)
    assert torch.isfinite(whole).all()
    assert torch.allclose(whole, llama.next_token_logits(ids, chunk=10), atol=1e-4)


def test_missing_path_is_a_clear_error():
    with pytest.raises(ValueError, match="/no/such/path"):
        hf.load("hf:/no/such/path")
    with pytest.raises(ValueError, match="hf:"):
        hf.load("nothf:model")
    with pytest.raises(ValueError, match="names no path"):
        hf.load("hf:")


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no connection")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ValueError, match="could not be found locally or on the Hugging Face hub"):
        hf.load("hf:someone/some-model")


def test_trust_remote_code_defaults_to_false(monkeypatch, tmp_path):
    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record)
    with pytest.raises(ValueError):
        hf.load(f"hf:{tmp_path}")
    with pytest.raises(ValueError):
        hf.load(f"hf:{tmp_path}", trust_remote_code=True)
    assert seen == [False, True]


def test_trust_remote_code_reaches_the_model_loader(monkeypatch, tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record)
    with pytest.raises(ValueError):
        hf.load(f"hf:{tmp_path}")
    assert seen["trust_remote_code"] is False


def test_chat_template(tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        _NoKind(tokenizer).prompt("the cat", "chat")
    chat_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                                    unk_token="[UNK]", eos_token="[EOS]")
    chat_tok.chat_template = ("{% for m in messages %}question {{ m['content'] }} {% endfor %}"
                              "{% if add_generation_prompt %}answer{% endif %}")
    ids = _NoKind(chat_tok).prompt("the cat", "chat")
    assert chat_tok.convert_ids_to_tokens(ids) == ["question", "the", "cat", "answer"]
    # the answer prefix opens the assistant's turn, after the template; base puts it after the text
    ids = _NoKind(chat_tok).prompt("the cat", "chat", answer_prefix=" the answer is")
    assert chat_tok.convert_ids_to_tokens(ids) == ["question", "the", "cat", "answer", "the", "answer", "is"]
    assert _NoKind(tokenizer).prompt("the cat", "base", " the answer is") == _NoKind(tokenizer).prompt(
        "the cat the answer is", "base")
    with pytest.raises(ValueError, match="template"):
        _NoKind(chat_tok).prompt("the cat", "fancy")


class _NoKind(hf.HFModel):
    """An HFModel with only a tokenizer, for the prompt templates."""

    def __init__(self, tokenizer):
        super().__init__(model=None, tokenizer=tokenizer)

    @property
    def kind(self):
        return "test"


@torch.no_grad()
def test_whole_prefill_fallback_is_needed(model):
    """The kinds that fall back to whole prefill really cannot be prefilled in pieces."""
    ids = torch.tensor([_ids(23, len(model.tokenizer))])
    whole, _ = model._step(ids, None, 0)
    pieces, _ = model._prefill_in_pieces(ids, 5)
    assert model.chunkable == torch.allclose(whole, pieces, atol=1e-4)


def test_cached_decoding_matches_recomputing_from_scratch(model):
    prompt = _ids(17, len(model.tokenizer), 5)
    out = model.generate([prompt], max_new_tokens=4, chunk=6)[0]
    for i, token in enumerate(out):
        assert int(model.next_token_logits(prompt + out[:i]).argmax()) == token
    if len(out) < 4:  # stopped at EOS
        assert int(model.next_token_logits(prompt + out).argmax()) in model.eos_ids


def test_dtype_is_passed_through(zoo, tmp_path):
    llama = zoo("llama")
    llama.model.save_pretrained(tmp_path)
    llama.tokenizer.save_pretrained(tmp_path)
    half = hf.load(f"hf:{tmp_path}", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert len(half.generate([_ids(10, len(half.tokenizer))], max_new_tokens=2)[0]) == 2
    with pytest.raises(ValueError, match="dtype"):
        hf.load(f"hf:{tmp_path}", dtype="float9")


@pytest.mark.parametrize("kind", ["llama", "mamba2"])
def test_a_fitted_text_task_runs_through_a_model_and_is_scored(zoo, kind, tmp_path, monkeypatch):
    """The README's example end to end: a RULER-style sample fitted to the model's tokenizer, a
    greedy answer decoded through chunked prefill, scored as RULER scores it."""
    from longarch import tasks
    from longarch.tasks import text

    monkeypatch.setenv("LONGARCH_TEXT_CACHE", str(tmp_path))
    model = zoo(kind)
    task = tasks.get("niah_single_1")
    sample = text.fit_sample(task, model.tokenizer, 512, seed=0)
    ids = model.prompt(sample.prompt, "base")
    assert len(ids) + sample.max_new_tokens <= 512
    [output] = model.generate([ids], sample.max_new_tokens, chunk=100)
    assert 1 <= len(output) <= sample.max_new_tokens
    prediction = model.tokenizer.decode(output)
    assert text.score("niah_single_1", [prediction], [sample.answers]) in (0.0, 100.0)
    assert text.score("niah_single_1", [" ".join(sample.answers)], [sample.answers]) == 100.0
