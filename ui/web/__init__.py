"""The browser wizard and pages (Gradio + Plotly). Renders what engine/ and jobs/ compute; owns no domain facts."""
