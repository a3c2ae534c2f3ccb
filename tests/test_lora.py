"""LoRA on MPDiT: peft's adapter API on the transformer, diffusers' loader API on the pipeline, and new classes.

References are computed independently of the adapter code: a copy of the base model taken before any adapter, and
LoRA merged by hand into a copy's weights (W + s * alpha / r * B @ A).
"""

import copy

import pytest
import torch
from conftest import tiny_inputs, tiny_pipeline
from huggingface_hub import HfApi
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from diffusers_mpdit import MPDiTPipeline
from diffusers_mpdit.loaders import NewClasses
from diffusers_mpdit.models.new_classes import add_classes, remove_classes

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
ALICE = "hf_alice_write"


def lora_config(rank=4, alpha=8):
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGETS)


def with_adapter(model, name="a", rank=4, alpha=8, seed=1):
    """Adds an adapter whose B is non-zero (peft initialises it to zero), so that it changes the output."""
    torch.manual_seed(seed)  # peft draws A from the global generator
    model.add_adapter(lora_config(rank, alpha), adapter_name=name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if f"lora_B.{name}" in key:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def merged_by_hand(base, adapted, name="a", scale=1.0, rank=4, alpha=8):
    """A copy of `base` with every LoRA of `adapted` added to its weight: W + scale * alpha / rank * B @ A."""
    merged = copy.deepcopy(base)
    for module_name, module in adapted.named_modules():
        if hasattr(module, "lora_A") and name in module.lora_A:
            a, b = module.lora_A[name].weight, module.lora_B[name].weight
            target = merged.get_submodule(module_name)
            with torch.no_grad():
                target.weight.add_(scale * alpha / rank * (b @ a))
    return merged


def out(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).sample


def test_adapter_output_scale_and_disable_match_hand_merged_weights(tiny_model):
    base = copy.deepcopy(tiny_model)
    inputs = tiny_inputs()
    adapted = with_adapter(tiny_model)
    expected = out(merged_by_hand(base, adapted), inputs)
    assert not torch.allclose(expected, out(base, inputs), atol=1e-3)  # the adapter does something
    torch.testing.assert_close(out(adapted, inputs), expected, atol=1e-5, rtol=1e-5)
    half = out(merged_by_hand(base, adapted, scale=0.5), inputs)
    torch.testing.assert_close(out(adapted, inputs, attention_kwargs={"scale": 0.5}), half, atol=1e-5, rtol=1e-5)
    # Scale 0, weight 0 and disabled adapters are the base model exactly; the scale does not persist.
    assert torch.equal(out(adapted, inputs, attention_kwargs={"scale": 0.0}), out(base, inputs))
    torch.testing.assert_close(out(adapted, inputs), expected, atol=1e-5, rtol=1e-5)
    adapted.set_adapters("a", 0.0)
    assert torch.equal(out(adapted, inputs), out(base, inputs))
    adapted.set_adapters("a", 1.0)
    adapted.disable_adapters()
    assert torch.equal(out(adapted, inputs), out(base, inputs))
    adapted.enable_adapters()
    torch.testing.assert_close(out(adapted, inputs), expected, atol=1e-5, rtol=1e-5)


def test_two_adapters_with_weights_fuse_unfuse_and_unload(tiny_model):
    base = copy.deepcopy(tiny_model)
    inputs = tiny_inputs()
    adapted = with_adapter(with_adapter(tiny_model, "a", seed=1), "b", seed=2)
    adapted.set_adapters(["a", "b"], [0.5, 2.0])
    by_hand = merged_by_hand(merged_by_hand(base, adapted, "a", 0.5), adapted, "b", 2.0)
    expected = out(by_hand, inputs)
    torch.testing.assert_close(out(adapted, inputs), expected, atol=1e-5, rtol=1e-5)
    unfused = out(adapted, inputs)
    adapted.fuse_lora()
    torch.testing.assert_close(out(adapted, inputs), unfused, atol=1e-5, rtol=1e-5)
    adapted.unfuse_lora()
    torch.testing.assert_close(out(adapted, inputs), unfused, atol=1e-5, rtol=1e-5)
    adapted.unload_lora()  # after a fuse and unfuse, the weights hold their rounding
    torch.testing.assert_close(out(adapted, inputs), out(base, inputs), atol=1e-5, rtol=1e-5)
    assert set(adapted.state_dict()) == set(base.state_dict())


def test_model_save_and_load_lora_adapter_round_trip(tiny_model, tmp_path):
    base = copy.deepcopy(tiny_model)
    inputs = tiny_inputs()
    adapted = with_adapter(tiny_model)
    adapted.save_lora_adapter(tmp_path, adapter_name="a")
    fresh = copy.deepcopy(base)
    # save_lora_adapter writes keys without the pipeline's "transformer." prefix: load them with prefix=None.
    fresh.load_lora_adapter(tmp_path, weight_name="pytorch_lora_weights.safetensors", adapter_name="x", prefix=None)
    assert fresh.peft_config["x"].r == 4 and fresh.peft_config["x"].lora_alpha == 8
    assert torch.equal(out(fresh, inputs), out(adapted, inputs))


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_model):
    inputs = tiny_inputs()
    grads = []
    for checkpointing in (False, True):
        model = with_adapter(copy.deepcopy(tiny_model)).train()
        model.requires_grad_(False)
        for key, p in model.named_parameters():
            p.requires_grad_("lora_" in key)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(**inputs).sample.square().mean().backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * len(TARGETS) * 4
    assert all(g.abs().sum() > 0 for g in grads[0].values())
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-6, rtol=1e-5)


def test_added_classes_leave_old_classes_and_the_null_class_unchanged(tiny_model):
    base = copy.deepcopy(tiny_model)
    inputs = tiny_inputs()
    old_labels = torch.tensor([3, 10])  # a class and the null class (id 10 before growing)
    ids = add_classes(tiny_model, 3)
    assert ids == [10, 11, 12] and tiny_model.config.num_classes == 13 and tiny_model.null_class_id == 13
    table, old = tiny_model.class_embed.embedding_table.weight, base.class_embed.embedding_table.weight
    assert table.shape[0] == 14 and torch.equal(table[:10], old[:10]) and torch.equal(table[13], old[10])
    grown = {**inputs, "class_labels": torch.tensor([3, 13])}
    assert torch.equal(out(tiny_model, grown), out(base, {**inputs, "class_labels": old_labels}))
    # A new class starts as the null class (its rows are the null row's copies).
    new = {**inputs, "class_labels": torch.tensor([11, 12])}
    assert torch.equal(out(tiny_model, new), out(base, {**inputs, "class_labels": torch.tensor([10, 10])}))
    mapping = remove_classes(tiny_model, ids)
    assert mapping == {**{i: i for i in range(10)}, 13: 10}
    assert torch.equal(tiny_model.class_embed.embedding_table.weight, old) and tiny_model.config.num_classes == 10
    with pytest.raises(ValueError, match="`class_ids` must be class ids in \\[0, 9\\]"):
        remove_classes(tiny_model, [10])
    with pytest.raises(ValueError, match="`num_new_classes` must be an integer >= 1"):
        add_classes(tiny_model, 0)


def test_pipeline_with_added_classes_samples_old_classes_as_before():
    base, grown = tiny_pipeline(), tiny_pipeline()
    ids = grown.add_classes(["zebra", "yak"])
    assert ids == [10, 11] and grown.id2label[11] == "yak" and grown.get_label_ids("zebra") == [10]
    kwargs = dict(num_inference_steps=3, guidance_scale=3.0, output_type="latent")
    expected = base(["coat", "bag"], generator=torch.Generator().manual_seed(0), **kwargs).images
    got = grown(["coat", "bag"], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.equal(got, expected)  # guidance's null id moved with the table: same CFG as before
    with pytest.raises(ValueError, match="already name classes"):
        grown.add_classes(["coat"])


def _pipeline_with_lora(new_names=("zebra", "yak"), alpha=8):
    pipe = tiny_pipeline()
    base_classes = pipe.transformer.config.num_classes
    with_adapter(pipe.transformer, "a", alpha=alpha)
    pipe.add_classes(list(new_names))
    with torch.no_grad():
        pipe.transformer.class_embed.embedding_table.weight[base_classes:-1] += 0.3
    return pipe, NewClasses.from_pipeline(pipe, base_classes)


def save_lora(pipe, folder, new_classes, name="a"):
    MPDiTPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer, adapter_name=name),
        transformer_lora_adapter_metadata=pipe.transformer.peft_config[name].to_dict(),
        new_classes=new_classes,
    )


def _latents(pipe, labels, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(labels, num_inference_steps=3, generator=generator, output_type="latent", **kwargs).images


def test_pipeline_lora_with_new_classes_from_the_local_hub(hub, tmp_path):
    trained, new_classes = _pipeline_with_lora()
    save_lora(trained, tmp_path / "lora", new_classes)
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["pytorch_lora_weights.safetensors"]
    HfApi(token=ALICE).create_repo("alice/zoo-lora")
    HfApi(token=ALICE).upload_folder(repo_id="alice/zoo-lora", folder_path=tmp_path / "lora")

    pipe = tiny_pipeline()
    base_state = copy.deepcopy(pipe.transformer.state_dict())
    base_labels = dict(pipe.id2label)
    before = _latents(pipe, ["coat", "bag"])
    pipe.load_lora_weights("alice/zoo-lora", adapter_name="zoo")
    assert pipe.id2label[10] == "zebra" and pipe.get_label_ids(["yak", "coat"]) == [11, 4]
    assert torch.equal(_latents(pipe, ["zebra", "coat"]), _latents(trained, ["zebra", "coat"]))
    # Scale 0 keeps the adapter's classes but not its effect: old classes as the base model draws them.
    assert torch.equal(_latents(pipe, ["coat", "bag"], attention_kwargs={"scale": 0.0}), before)
    assert not torch.equal(_latents(pipe, ["coat", "bag"]), before)
    pipe.unload_lora_weights()
    assert pipe.id2label == base_labels and pipe.transformer.config.num_classes == 10
    assert pipe.transformer.state_dict().keys() == base_state.keys()
    assert all(torch.equal(v, base_state[k]) for k, v in pipe.transformer.state_dict().items())
    assert torch.equal(_latents(pipe, ["coat", "bag"]), before)


def test_pipeline_lora_file_and_state_dict_sources_fuse_and_two_adapters(tmp_path):
    trained, new_classes = _pipeline_with_lora()
    save_lora(trained, tmp_path, new_classes)
    expected = _latents(trained, ["zebra", "coat"])

    pipe = tiny_pipeline()
    pipe.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors")  # a file path
    assert pipe.get_active_adapters() == ["default_0"]
    assert torch.equal(_latents(pipe, ["zebra", "coat"]), expected)
    unfused = _latents(pipe, ["yak", "bag"])
    pipe.fuse_lora(lora_scale=1.0)
    torch.testing.assert_close(_latents(pipe, ["yak", "bag"]), unfused, atol=1e-5, rtol=1e-5)
    pipe.unfuse_lora()
    torch.testing.assert_close(_latents(pipe, ["yak", "bag"]), unfused, atol=1e-5, rtol=1e-5)

    # A second adapter from a state dict, naming its classes: ids after the first adapter's.
    # (A state dict has no LoraConfig header: peft reads the rank from the shapes and takes alpha = rank.)
    other, other_classes = _pipeline_with_lora(["owl"], alpha=4)
    state_dict = {
        f"transformer.{k}": v for k, v in get_peft_model_state_dict(other.transformer, adapter_name="a").items()
    }
    state_dict["transformer.class_embed.new_class_rows"] = other_classes.rows
    pipe.load_lora_weights(state_dict, adapter_name="owls", class_names=["owl"])
    assert pipe.get_label_ids(["owl", "yak"]) == [12, 11]
    pipe.set_adapters(["default_0", "owls"], adapter_weights=[1.0, 0.0])
    torch.testing.assert_close(_latents(pipe, ["zebra", "coat"]), expected, atol=1e-5, rtol=1e-5)  # (unfused)
    pipe.delete_adapters("default_0")  # its classes go; the owl moves down to id 10
    assert pipe.get_label_ids(["owl"]) == [10] and "zebra" not in pipe.labels
    with pytest.raises(ValueError, match=r"not in the list of present adapters"):
        pipe.set_adapters(["nope"])

    # With the first adapter deleted, the pipeline is the owl LoRA's own (its row now at id 10, as in `other`); fused,
    # the adapter keeps its class on unload, and its effect.
    pipe.set_adapters(["owls"], adapter_weights=[1.0])
    torch.testing.assert_close(_latents(pipe, ["owl", "coat"]), _latents(other, ["owl", "coat"]), atol=1e-5, rtol=1e-5)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    assert pipe.get_label_ids(["owl"]) == [10]
    torch.testing.assert_close(_latents(pipe, ["owl", "coat"]), _latents(other, ["owl", "coat"]), atol=1e-5, rtol=1e-5)


def test_a_lora_for_another_model_is_refused_in_one_line_and_changes_nothing(tmp_path):
    bigger = tiny_pipeline(attention_head_dim=24)
    with_adapter(bigger.transformer)
    MPDiTPipeline.save_lora_weights(
        tmp_path, transformer_lora_layers=get_peft_model_state_dict(bigger.transformer, adapter_name="a")
    )
    pipe = tiny_pipeline()
    before = copy.deepcopy(pipe.transformer.state_dict())
    with pytest.raises(ValueError, match=r"^This LoRA does not fit this MPDiT \(hidden size 32.*has 32\.$") as info:
        pipe.load_lora_weights(tmp_path)
    assert "\n" not in str(info.value)
    assert pipe.transformer.state_dict().keys() == before.keys() and not hasattr(pipe.transformer, "peft_config")
    foreign = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072)}
    with pytest.raises(ValueError, match="it has a layer 'single_transformer_blocks.0.attn.to_q', which"):
        pipe.load_lora_weights(foreign)
    with pytest.raises(FileNotFoundError, match="No LoRA folder or file at './missing-lora'"):
        pipe.load_lora_weights("./missing-lora")
    # New classes saved for a model with more classes than this one.
    trained, new_classes = _pipeline_with_lora()
    save_lora(trained, tmp_path / "more", NewClasses(new_classes.rows, new_classes.names, 20))
    with pytest.raises(ValueError, match="adds classes to a model of 20 classes; the transformer has 10"):
        pipe.load_lora_weights(tmp_path / "more")
    assert pipe.transformer.config.num_classes == 10
    # The same LoRA twice: its class names are taken the second time, refused before the adapter goes in.
    save_lora(trained, tmp_path / "zoo", new_classes)
    pipe.load_lora_weights(tmp_path / "zoo", adapter_name="first")
    before = copy.deepcopy(pipe.transformer.state_dict())
    with pytest.raises(ValueError, match=r"\['zebra', 'yak'\] already name classes"):
        pipe.load_lora_weights(tmp_path / "zoo", adapter_name="second")
    assert pipe.get_list_adapters() == {"transformer": ["first"]} and pipe.transformer.config.num_classes == 12
    assert pipe.transformer.state_dict().keys() == before.keys()


def test_front_ends_load_a_lora_through_the_sampling_configuration(tmp_path, capsys):
    from conftest import run_in_process

    from diffusers_mpdit.cli import main as cli_main
    from diffusers_mpdit.sampling import SamplingConfig, load_pipeline

    trained, new_classes = _pipeline_with_lora()
    save_lora(trained, tmp_path / "lora", new_classes)
    lora_file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    base = tiny_pipeline()
    base.save_pretrained(tmp_path / "base")

    # The adapter weight set at load equals the per-call scale of a pipeline loaded by hand.
    pipe = load_pipeline(str(tmp_path / "base"), "cpu", lora=str(lora_file), lora_scale=0.5)
    pipe.set_progress_bar_config(disable=True)
    by_hand = MPDiTPipeline.from_pretrained(tmp_path / "base")
    by_hand.set_progress_bar_config(disable=True)
    by_hand.load_lora_weights(tmp_path / "lora")
    expected = _latents(by_hand, ["zebra", "coat"], attention_kwargs={"scale": 0.5})
    torch.testing.assert_close(_latents(pipe, ["zebra", "coat"]), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, _latents(by_hand, ["zebra", "coat"]), atol=1e-4)

    config = SamplingConfig(lora=str(tmp_path / "lora" / "." / "pytorch_lora_weights.safetensors"), lora_scale=0.5)
    settings = config.validate().settings(pipe)
    assert settings["lora"] == str(lora_file.resolve()) and settings["lora_scale"] == 0.5  # one spelling per file
    assert f"LoRA {lora_file.resolve()} at 0.5" in config.describe(pipe)

    out = tmp_path / "grid.png"
    argv = ["generate", "--model", tmp_path / "base", "--lora", tmp_path / "lora", "--lora_scale", "0.5"]
    code, _, err = run_in_process(cli_main, [*argv, "--class", "zebra", "coat", "--steps", "2", "-o", out], capsys)
    assert code == 0 and out.is_file(), err
    argv = ["generate", "--model", tmp_path / "base", "--lora", tmp_path / "nothing", "-o", tmp_path / "x.png"]
    code, _, err = run_in_process(cli_main, argv, capsys)
    assert code == 2 and "--lora" in err and "no such file or folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_in_process(cli_main, [*argv[:3], "--lora", tmp_path / "base", "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and f"lora '{tmp_path / 'base'}': cannot load it" in err and len(err.strip().splitlines()) == 1
