fetch("/health").then(r => r.json()).then(h => { document.getElementById("status").textContent = "model ready: " + h.model.conditioning; });
