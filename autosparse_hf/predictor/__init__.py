"""The AutoS predictor: config, model (registered with the transformers Auto classes), training, metrics."""

from transformers import AutoConfig, AutoModel

from .configuration import ARCHITECTURES, LOSSES, AutoSConfig
from .loading import load_predictor
from .modeling import AutoSModel, AutoSOutput

AutoConfig.register("autos", AutoSConfig, exist_ok=True)
AutoModel.register(AutoSConfig, AutoSModel, exist_ok=True)

__all__ = ["ARCHITECTURES", "LOSSES", "AutoSConfig", "AutoSModel", "AutoSOutput", "load_predictor"]
