from tests.attribution.conftest import (  # noqa: F401  (fixtures shared with attribution tests)
    baselines,
    images,
    mean_baselines,
    reference_images,
    saes,
    vit,
)
