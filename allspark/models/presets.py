"""Named encoder presets: a factory per preset that builds its class with the preset's keywords."""
__all__ = ["preset_factory"]


def preset_factory(cls, presets, name):
    """A function ``name(**overrides)`` building ``cls(**presets[name], **overrides)``; its ``target``
    names the class and ``preset`` the keywords it supplies, so the builder can check config keywords
    against the class's signature."""
    def factory(**overrides):
        return cls(**{**presets[name], **overrides})
    factory.__name__ = name
    factory.__doc__ = f"{cls.__name__} preset {name}: {presets[name]}; keyword arguments override it."
    factory.target = cls
    factory.preset = presets[name]
    return factory
