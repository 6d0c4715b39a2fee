"""The Gradio app: UI wiring only, one module per tab (see demo.app.build_demo). The maths lives in explain/."""
