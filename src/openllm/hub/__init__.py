"""Publishing: model paths (`paths`), model cards (`model_card`) and pushing a finished folder (`push`)."""
