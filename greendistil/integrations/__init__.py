"""greendistil's measurement inside other libraries' training loops (`integrations.transformers`: a
`transformers.Trainer` callback). Each module imports its library only when it is imported itself."""
