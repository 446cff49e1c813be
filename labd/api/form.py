"""The spawn form: the HTML fragment JupyterHub shows on its spawn page.

Field names are the ``options`` fields of a create (docs/api.md), so JupyterHub
posts the form back unchanged: a radio list ``image_list`` of the featured
images plus the sentinel that defers to the ``image_dropdown`` select of
every image, a ``size`` select of the sizes within the user's quota, and the
``enable_debug`` and ``reset_user_env`` checkboxes.  Every text that comes
from configuration or the user is escaped.
"""

from __future__ import annotations

from html import escape

from labd.api.service import FormChoices
from labd.config import ImageConfig, SizeConfig
from labd.lab.protocol import DROPDOWN_SENTINEL
from labd.lab.quantity import format_bytes

__all__ = ["render_form"]


def render_form(choices: FormChoices) -> str:
    """Return the spawn form for ``choices``, or why the user may not spawn."""
    user = escape(choices.username)
    if not choices.spawn_allowed:
        return f'<p class="labd-form-refused">Spawning labs is not permitted for {user}.</p>\n'
    if not choices.sizes:
        return f'<p class="labd-form-refused">No lab size fits within the quota of {user}.</p>\n'
    return "\n".join(
        [
            '<div class="labd-form">',
            _images(choices),
            _sizes(choices),
            _options(),
            "</div>",
            "",
        ]
    )


def _images(choices: FormChoices) -> str:
    recommended = choices.images.recommended
    radios = [
        _radio("image_list", image.reference, _image_label(image), image == recommended)
        for image in choices.images.featured
    ]
    radios.append(_radio("image_list", DROPDOWN_SENTINEL, "Select another image:", False))
    options = [
        f'<option value="{escape(image.reference)}">{escape(_image_label(image))}</option>'
        for image in choices.images.all
    ]
    return "\n".join(
        [
            "<fieldset>",
            "<legend>Image</legend>",
            *radios,
            '<select name="image_dropdown">',
            *options,
            "</select>",
            "</fieldset>",
        ]
    )


def _image_label(image: ImageConfig) -> str:
    return image.display_name


def _radio(name: str, value: str, label: str, checked: bool) -> str:
    mark = " checked" if checked else ""
    return (
        f'<label><input type="radio" name="{name}" value="{escape(value)}"{mark}>'
        f" {escape(label)}</label><br>"
    )


def _sizes(choices: FormChoices) -> str:
    options = [
        f'<option value="{escape(name)}"{" selected" if name == choices.default_size else ""}>'
        f"{escape(_size_label(name, size))}</option>"
        for name, size in choices.sizes.items()
    ]
    return "\n".join(
        [
            "<fieldset>",
            "<legend>Size</legend>",
            '<select name="size">',
            *options,
            "</select>",
            "</fieldset>",
        ]
    )


def _size_label(name: str, size: SizeConfig) -> str:
    label = f"{name.title()} ({size.limits.cpu:g} CPU, {format_bytes(size.limits.memory)})"
    return f"{label}: {size.description}" if size.description else label


def _options() -> str:
    return "\n".join(
        [
            "<fieldset>",
            "<legend>Options</legend>",
            '<label><input type="checkbox" name="enable_debug" value="true">'
            " Enable debug logs</label><br>",
            '<label><input type="checkbox" name="reset_user_env" value="true">'
            " Reset user environment (move configuration files aside)</label>",
            "</fieldset>",
        ]
    )
