"""Guest image recipes, one directory each (recipe.toml, init.sh, ...).

Shipped in the wheel as the package `harness.guest_images`
(pyproject.toml maps this directory); this file lets an editable install
import it the same way.  `harness.paths.guest_images_root` finds it.
"""
