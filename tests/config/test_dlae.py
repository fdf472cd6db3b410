"""DLAE config import: every key converted or refused; ignored keys now work (reference sections 1, 10)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ctdl.config.dlae import DLAE_KEYS, apply_dlae_overrides, dlae_import, dlae_to_dict, prebuilt_model_name
from ctdl.config.load import config_from_dict, config_to_dict, load_config
from ctdl.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dlae_configs"


@pytest.fixture
def fcn() -> dict:
    path = CONFIGS / "example_fcn.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


def convert(raw: dict) -> object:
    return config_from_dict(dlae_to_dict(raw, "test.json"), "test.json")


def edit(raw: dict, **changes: str) -> dict:
    out = copy.deepcopy(raw)
    for dotted, value in changes.items():
        sec, key = dotted.split("__")
        out[sec][key] = value
    return out


def test_fcn_example_converts_every_setting(fcn: dict) -> None:
    cfg = convert(fcn)
    assert cfg.task == "segmentation" and cfg.seed == 1 and cfg.name == "test"
    assert cfg.data.format == "hdf5" and str(cfg.data.train_x).endswith("example_fcn_X.h5")
    assert cfg.data.classes == ["background", "class_1", "class_2", "class_3"]
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.8, 0.2, 0.0)
    assert cfg.preprocessing.normalization == "samplewise_unity_x" and cfg.preprocessing.hu_window is None
    assert cfg.sampling.mode == "slices2d"
    assert cfg.model.name == "layerlist" and len(cfg.model.layers) == 61 and cfg.model.in_channels == 1
    assert cfg.loss.name == "cross_entropy"
    o = cfg.optimizer
    assert (o.name, o.lr, o.betas, o.eps) == ("adam", 1e-4, (0.9, 0.999), 1e-7)  # epsilon None -> Keras 1e-7
    s = cfg.schedule
    assert (s.name, s.factor, s.patience, s.cooldown, s.min_lr) == ("plateau", 0.2, 3, 3, 1e-9)
    t = cfg.training
    assert (t.batch_size, t.epochs, t.shuffle, t.device) == (1, 500, True, "auto")
    assert t.early_stopping.enabled and t.early_stopping.patience == 10 and not t.early_stopping.restore_best
    a = cfg.augmentation
    assert not a.enabled and a.affine == "dlae" and a.flip_axes == [1, 2] and a.rounds == 1
    assert cfg.monitors.metrics == ["dice", "accuracy"]


def test_step_decay_now_works(fcn: dict) -> None:
    # bug 9: step_decay_* was read and never implemented
    raw = edit(fcn, learning_rate_schedule__decay_on_plateau_switch="False",
               learning_rate_schedule__step_decay_switch="True", learning_rate_schedule__step_decay_factor="0.5",
               learning_rate_schedule__step_decay_period="4")
    s = convert(raw).schedule
    assert (s.name, s.gamma, s.step_size) == ("step", 0.5, 4)
    import torch

    from ctdl.engine.schedules import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(s, opt, 20)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25])  # lr0 * factor ** floor(epoch / period)


def test_two_schedules_are_refused(fcn: dict) -> None:
    raw = edit(fcn, learning_rate_schedule__step_decay_switch="True")
    with pytest.raises(ConfigError, match="learning_rate_schedule.step_decay_switch.*one learning-rate schedule"):
        dlae_to_dict(raw, "x.json")


def test_weight_loss_switch_gives_balanced_weights(fcn: dict) -> None:
    # bug 9 (weight_loss_switch unused) and bug 8 (weighted CE pass broken)
    cfg = convert(edit(fcn, preprocessing__weight_loss_switch="True"))
    assert (cfg.loss.name, cfg.loss.class_weights) == ("weighted_cross_entropy", "balanced")
    from ctdl.losses.registry import create_loss

    create_loss(cfg.loss.name, weights=[1.0, 2.0, 3.0, 4.0])  # the converted loss takes the computed weights
    with pytest.raises(ConfigError, match="weight_loss_switch: loss tversky takes no class weights"):
        dlae_to_dict(edit(fcn, preprocessing__weight_loss_switch="True", loss_function__loss="tversky"), "x.json")
    cfg = convert(edit(fcn, loss_function__loss="weighted_categorical_crossentropy"))
    assert (cfg.loss.name, cfg.loss.class_weights) == ("weighted_cross_entropy", "balanced")


def test_brightness_and_channel_shift_reach_the_augmentation(fcn: dict) -> None:
    # bug 6: never passed to the generators
    cfg = convert(edit(fcn, augmentation__brightness_range="(0.8, 1.2)", augmentation__channel_shift_range="0.1",
                       augmentation__apply_augmentation_switch="True", augmentation__shear_range="5",
                       augmentation__width_shift="0.1", augmentation__height_shift="3", augmentation__zoom_range="0.2",
                       augmentation__fill_mode="wrap", augmentation__rotation_range="10"))
    a = cfg.augmentation
    assert a.brightness_range == (0.8, 1.2) and a.channel_shift == 0.1
    assert (a.shear_deg, a.width_shift, a.height_shift, a.zoom, a.fill_mode, a.rotation_deg) == (5, 0.1, 3, 0.2, "wrap", 10)
    from ctdl.data.augment import build_augmentation
    from ctdl.data.dlae_transforms import DlaeAffine

    aug = build_augmentation(a, dims=2)
    assert isinstance(aug, DlaeAffine) and aug.brightness == (0.8, 1.2) and aug.channel_shift == 0.1


def test_global_normalization_ranges_are_parsed(fcn: dict) -> None:
    # bug 1 and 2: min/max were parsed only for invalid names; _xy used x for y
    cfg = convert(edit(fcn, preprocessing__normalization_type="global_negpos_xy",
                       preprocessing__minimum_image_intensity="-1000, 0", preprocessing__maximum_image_intensity="3000, 3"))
    assert cfg.preprocessing.intensity_range == (-1000, 3000) and cfg.preprocessing.label_range == (0, 3)
    with pytest.raises(ConfigError, match="minimum_image_intensity.*also scales y"):
        dlae_to_dict(edit(fcn, preprocessing__normalization_type="global_unity_xy"), "x.json")


def test_centring_switches_and_zca(fcn: dict) -> None:
    # bug 3: featurewise centring crashed
    cfg = convert(edit(fcn, augmentation__featurewise_centering_switch="True",
                       augmentation__samplewise_normalization_switch="True", augmentation__zca_epsilon="1e-6",
                       preprocessing__repeat_X_switch="True", preprocessing__repeat_X_quantity="3"))
    p = cfg.preprocessing
    assert (p.center, p.std_normalize, p.zca_epsilon, p.repeat_channels) == ("featurewise", "samplewise", 1e-6, 3)


def test_exact_enums_not_substrings(fcn: dict) -> None:
    # bug 13: enum membership was a substring test, so '' or fragments passed
    for key, value, match in (("optimizer__optimizer", "Ada", "unknown optimizer 'Ada'"),
                              ("preprocessing__normalization_type", "", "normalization_type"),
                              ("training_configurations__hardware", "gp", "hardware"),
                              ("config_file__model_signal", "FC", "model_signal")):
        with pytest.raises(ConfigError, match=match):
            dlae_to_dict(edit(fcn, **{key: value}), "x.json")


def test_booleans_are_exactly_true_or_false(fcn: dict) -> None:
    with pytest.raises(ConfigError, match="shuffle_data_switch: expected 'True' or 'False'"):
        dlae_to_dict(edit(fcn, training_configurations__shuffle_data_switch="yes"), "x.json")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("paths__load_config", "c.json", "paths.load_config: not supported"),
        ("paths__load_checkpoint", "c.h5", "paths.load_checkpoint.*--resume"),
        ("training_configurations__number_of_gpus", "2", "number_of_gpus.*one device"),
        ("loss_function__loss", "mean_squared_error", "pixel-wise regression"),
        ("loss_function__loss", "ssd", "ssd is for model_signal BBD"),
        ("augmentation__zoom_range", "1.5", "zoom_range"),
        ("augmentation__fill_mode", "mirror", "fill_mode"),
        ("training_configurations__validation_split", "1.0", "validation_split"),
        ("layers__serial_layer_list", ["Dense:3"], r"serial_layer_list\[0\]: entry 0 must be 'Input"),
        ("learning_rate_schedule__learning_rate", "abc", "learning_rate: expected a number"),
    ],
)
def test_refusals_name_the_key(fcn: dict, key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dlae_to_dict(edit(fcn, **{key: value}), "x.json")


def test_unknown_keys_and_sections_are_refused(fcn: dict) -> None:
    raw = copy.deepcopy(fcn)
    raw["augmentation"]["horizontal_flip"] = "True"  # the experiment generator's wrong key (bug 23)
    with pytest.raises(ConfigError, match="x.json: augmentation.horizontal_flip: unknown DLAE key"):
        dlae_to_dict(raw, "x.json")
    raw = copy.deepcopy(fcn)
    raw["extras"] = {}
    with pytest.raises(ConfigError, match="extras: unknown DLAE section"):
        dlae_to_dict(raw, "x.json")


def test_manual_spelling_and_gui_defaults(fcn: dict) -> None:
    raw = copy.deepcopy(fcn)
    raw["config file"] = raw.pop("config_file")
    raw["augmentation"]["rotation range"] = raw["augmentation"].pop("rotation_range")
    del raw["training_configurations"]["validation_split"]  # missing -> GUI default 0.2 (level 1 wrote 0.0)
    cfg = convert(raw)
    assert cfg.data.split.val == 0.2
    assert set(DLAE_KEYS) == {"config_file", "paths", "preprocessing", "augmentation", "loss_function",
                              "learning_rate_schedule", "optimizer", "training_configurations", "monitors",
                              "save_configurations", "bbd_options", "layers"}


def test_losses_and_optimizers_map(fcn: dict) -> None:
    cases = {"tversky": ("tversky", {"alpha": 0.3, "beta": 0.7, "batch": True}),
             "focal": ("focal", {"alpha": 0.3, "gamma": 0.7}),
             "soft_dice": ("dice", {"batch": True, "smooth": 0.3}),
             "jaccard": ("jaccard", {"smooth": 0.3})}
    for dlae, (name, params) in cases.items():
        cfg = convert(edit(fcn, loss_function__loss=dlae, loss_function__parameter1="0.3", loss_function__parameter2="0.7"))
        assert (cfg.loss.name, cfg.loss.params) == (name, params)
    cfg = convert(edit(fcn, optimizer__optimizer="SGD", optimizer__momentum="0.8"))
    assert (cfg.optimizer.name, cfg.optimizer.momentum, cfg.optimizer.nesterov) == ("sgd", 0.8, False)
    cfg = convert(edit(fcn, optimizer__optimizer="RMSprop", optimizer__rho="0.95", optimizer__momentum="0.8"))
    assert (cfg.optimizer.name, cfg.optimizer.rho, cfg.optimizer.momentum) == ("rmsprop", 0.95, 0.0)
    # bug 10: NAdam + decay raised TypeError in the original
    cfg = convert(edit(fcn, optimizer__optimizer="NAdam", learning_rate_schedule__learning_rate_decay_factor="0.01",
                       learning_rate_schedule__decay_on_plateau_switch="False"))
    assert (cfg.optimizer.name, cfg.schedule.name, cfg.schedule.decay) == ("nadam", "time_decay", 0.01)


def test_cnn_classification_and_regression() -> None:
    raw = json.loads((CONFIGS / "example_cnn.json").read_text())
    cfg = convert(raw)
    assert cfg.task == "classification" and cfg.data.classes == ["class_0", "class_1", "class_2"]
    assert cfg.loss.name == "categorical_cross_entropy"
    assert cfg.model.layers[1].startswith("Xception") and cfg.model.in_channels == 1
    cfg = convert(edit(raw, loss_function__loss="mean_absolute_error"))
    assert cfg.task == "regression" and cfg.loss.name == "mae"


def test_gan_optimizer_type_field_and_lrs() -> None:
    # bug 10: the type field of the GAN optimizers was ignored
    raw = json.loads((CONFIGS / "example_gan.json").read_text())
    raw["optimizer"]["gan_optimizer"] = "SGD:0.5:0.99:0.9:0.7:None"
    raw["optimizer"]["discriminator_optimizer"] = "Adamax:0.5:0.9:0.9:0.0:1e-8"
    raw["learning_rate_schedule"]["discriminator_learning_rate"] = "0.0003:0.0"
    cfg = convert(raw)
    g, d = cfg.gan.g_optimizer, cfg.gan.d_optimizer
    assert (g.name, g.lr, g.momentum) == ("sgd", 0.0002, 0.7)
    assert (d.name, d.lr, d.betas, d.eps) == ("adamax", 0.0003, (0.5, 0.9), 1e-8)
    assert cfg.gan.mode == "pix2pix" and cfg.gan.lambda_l1 == 100.0 and cfg.gan.adversarial_loss == "lsgan"
    assert len(cfg.gan.generator.layers) == 53 and len(cfg.gan.discriminator.layers) == 13
    raw["loss_function"].update(loss="cyclegan", parameter1="10", parameter2="5")
    cfg = convert(raw)
    assert (cfg.gan.mode, cfg.gan.lambda_cycle, cfg.gan.lambda_identity) == ("cyclegan", 10, 5)
    raw["learning_rate_schedule"]["gan_learning_rate"] = "0.0002:0.1"
    with pytest.raises(ConfigError, match="gan_learning_rate.*decay"):
        dlae_to_dict(raw, "x.json")


def test_bbd_options_including_nms_maximum_output() -> None:
    # bug 9: nms_maximum_output unused; bug 27: class ids from 1 -> classes background + n
    raw = json.loads((CONFIGS / "example_bbd.json").read_text())
    raw["bbd_options"]["nms_maximum_output"] = "123"
    cfg = convert(raw)
    d = cfg.detection
    assert cfg.task == "detection" and cfg.data.classes == ["background", "class_1", "class_2", "class_3"]
    assert d.max_outputs == 123 and d.input_size == (512, 512) and d.scales == [0.1, 0.9]
    assert d.aspect_ratios_type == "per_layer" and len(d.aspect_ratios) == 7 and d.aspect_ratios[1][-1] == 0.333
    assert d.steps == [8, 16, 32, 64, 128, 256, 512] and d.offsets is None
    assert (d.neg_pos_ratio, d.alpha, d.confidence_threshold, d.iou_threshold, d.top_k) == (3, 1.0, 0.01, 0.45, 200)
    assert d.normalize_coords and not d.two_boxes_for_ar1 and d.variances == (0.1, 0.1, 0.2, 0.2)
    assert (d.pos_iou_threshold, d.neg_iou_limit) == (0.5, 0.3)
    raw["preprocessing"]["image_context"] = "3D"
    with pytest.raises(ConfigError, match="image_context: bounding-box detection is 2D only"):
        dlae_to_dict(raw, "x.json")


def test_prebuilt_names_map_to_registry_names() -> None:
    assert prebuilt_model_name("unet2d") == "dlae_unet2d" and prebuilt_model_name("unet3d") == "dlae_unet3d"
    assert prebuilt_model_name("VGG16") == "vgg16" and prebuilt_model_name("InceptionResNetV2") == "inceptionresnetv2"
    assert prebuilt_model_name("resnet50_unet") == "resnet50_unet" and prebuilt_model_name("MobileNetV2_ssd") == "mobilenetv2_ssd"
    assert prebuilt_model_name("pix2pix") == "pix2pix" and prebuilt_model_name("ssd") == "ssd"
    with pytest.raises(ConfigError, match="not a DLAE prebuilt"):
        prebuilt_model_name("vgg17")


def test_lone_prebuilt_name_selects_the_registered_model(fcn: dict) -> None:
    cfg = convert(edit(fcn, layers__serial_layer_list=["unet2d"]))
    assert cfg.model.name == "dlae_unet2d" and cfg.model.layers is None


def test_overrides_accept_dlae_key_paths(fcn: dict, tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(fcn))
    cfg = load_config(path, ["paths.train_X=/data/x.h5", "paths.train_y=/data/y.h5", "training_configurations.batch_size=4",
                             "preprocessing.categories=3", "training.epochs=2", "optimizer.beta1=0.5"])
    assert str(cfg.data.train_x) == "/data/x.h5" and str(cfg.data.train_y) == "/data/y.h5"
    assert cfg.training.batch_size == 4 and cfg.training.epochs == 2 and cfg.n_classes == 3
    assert cfg.optimizer.betas == (0.5, 0.999)
    with pytest.raises(ConfigError, match="paths.*without key 'train_images'.*data.train_x"):
        load_config(path, ["paths.train_images=/d.h5"])
    raw, rest = apply_dlae_overrides(fcn, ["preprocessing.normalization=zscore"], "x")
    assert rest == ["preprocessing.normalization=zscore"]  # a ctdl key, applied after conversion


def test_cli_import_writes_yaml_that_round_trips(fcn: dict, tmp_path: Path) -> None:
    from ctdl.cli import main

    src = tmp_path / "fcn.json"
    src.write_text(json.dumps(edit(fcn, save_configurations__save_csv_path="C:/x/h.csv")))
    out = tmp_path / "fcn.yaml"
    assert main(["config", "import-dlae", str(src), "-o", str(out), "--set", "paths.train_X=/d/x.h5"]) == 0
    text = out.read_text()
    assert text.startswith("# imported from the DLAE config") and "# note: save_configurations.save_csv_path" in text
    cfg = load_config(out)
    assert str(cfg.data.train_x) == "/d/x.h5"
    again = config_from_dict(yaml.safe_load(text), "again")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert config_to_dict(cfg) == config_to_dict(load_config(src, ["paths.train_X=/d/x.h5"]))


def test_notes_on_changed_meanings(fcn: dict) -> None:
    _, notes = dlae_import(edit(fcn, config_file__type_signal="Inference"), "x.json")
    assert any("ctdl predict" in n for n in notes)


def test_cli_validate_accepts_a_dlae_config_with_dlae_overrides(fcn: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from ctdl.cli import main

    src = tmp_path / "fcn.json"
    src.write_text(json.dumps(fcn))
    assert main(["config", "validate", str(src), "--set", "paths.train_X=/d/x.h5", "--set", "paths.train_y=/d/y.h5"]) == 0
    assert "valid (segmentation, model layerlist, 4 classes)" in capsys.readouterr().out
    assert main(["config", "validate", str(src), "--set", "paths.bogus=1"]) == 2
    assert "paths is a DLAE section without key 'bogus'" in capsys.readouterr().err


def test_every_prebuilt_name_is_registered() -> None:
    from ctdl.config.dlae import PREBUILT_NAMES
    from ctdl.models import list_models

    missing = sorted(set(PREBUILT_NAMES.values()) - set(list_models()))
    assert not missing, f"DLAE prebuilt names without a registered ctdl model: {missing}"
