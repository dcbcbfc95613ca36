"""`.env.example` documents every setting of both settings classes."""

import re

from core.settings import REPO_ROOT, Settings
from serving.config import ServingSettings


def test_env_example_names_every_setting():
    text = (REPO_ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]+)=", text, re.M))
    missing = []
    for cls in (Settings, ServingSettings):
        prefix = cls.model_config.get("env_prefix", "")
        for name, f in cls.model_fields.items():
            var = (
                f.validation_alias if isinstance(f.validation_alias, str) else prefix + name.upper()
            )
            if var not in documented:
                missing.append(var)
    assert not missing, f".env.example does not document {missing}"
